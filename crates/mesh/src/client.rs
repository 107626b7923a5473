//! [`MeshClient`]: the whole stack for one local service, built from
//! configuration.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use mesh_balance::{BalanceLayer, TrackedBody};
use mesh_breaker::BreakerLayer;
use mesh_core::clock;
use mesh_core::ext::{AffinityKey, Deadline, SelectedEndpoint, TargetService};
use mesh_core::{BoxError, EventBus, MeshError, MeshEvent, Probe, ServiceName};
use mesh_discover::{
    AgentCheck, Catalog, ConsulRegistry, DiscoverLayer, FileRegistry, KubernetesDnsRegistry,
    PortSource, Registration, Registry, StaticRegistry,
};
use mesh_health::{HealthCheck, HealthCheckManager, ProbeReport, UpstreamHealthChecker};
use mesh_retry::RetryLayer;
use tokio::sync::{broadcast, Notify};
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::config::{DiscoveryConfig, MeshConfig};
use crate::metrics::MeshMetrics;
use crate::services::{ServiceState, ServiceStates};
use crate::split::{SplitLayer, Splits, Subset};
use crate::transport::{Transport, Transports};

pin_project_lite::pin_project! {
    /// The body of a response through the mesh: hyper's, counted as in
    /// flight on its endpoint and by the client (for shutdown's drain and
    /// the service's concurrency limit) until it ends or is dropped.
    pub struct MeshBody {
        #[pin]
        inner: TrackedBody<Incoming>,
        call: Option<CallGuard>,
    }
}

impl http_body::Body for MeshBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = &polled {
            // Ended: the call is over.
            this.call.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for MeshBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshBody").finish_non_exhaustive()
    }
}

type Stack = mesh_retry::Retry<
    mesh_discover::Discover<
        crate::split::SplitService<
            mesh_balance::Balance<mesh_breaker::Breaker<tower::timeout::Timeout<Transport>>>,
        >,
    >,
>;

/// One service's layers: the stack and handles on its layers for metrics.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) stack: Stack,
    pub(crate) balance: BalanceLayer,
    pub(crate) breaker: BreakerLayer,
    pub(crate) retry: RetryLayer,
}

/// Per-call options (the design document's `{ clientId }` and friends).
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Headers to send.
    pub headers: HeaderMap,
    /// The whole call, retries included, must end within this.
    pub timeout: Option<Duration>,
    /// A client key for session affinity and consistent hashing: used by
    /// the balancer when its `sticky` sources include `"extension"` (or the
    /// strategy is `consistent_hash`), and to keep a client on one canary
    /// subset.
    pub affinity_key: Option<String>,
}

impl CallOptions {
    /// Options with an affinity key (the design document's `clientId`).
    pub fn client_id(key: impl Into<String>) -> Self {
        CallOptions {
            affinity_key: Some(key.into()),
            ..CallOptions::default()
        }
    }

    /// With a timeout for the whole call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// With a header.
    pub fn header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }
}

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

struct Inner {
    config: MeshConfig,
    name: ServiceName,
    bus: EventBus,
    catalog: Catalog,
    discover: DiscoverLayer,
    splits: Arc<Splits>,
    default: Route,
    /// The overridden services' own layers, built at start.
    routes: HashMap<ServiceName, Route>,
    /// What the client keeps per destination service (limits, retry
    /// budget, upstream checker), bounded.
    services: ServiceStates,
    /// The mutual TLS clients, for upstream probes over mutual TLS.
    transports: Transports,
    closed: AtomicBool,
    in_flight: AtomicUsize,
    drained: Notify,
    health: Option<HealthCheckManager>,
    consul: Option<ConsulRegistry>,
    registered: Mutex<Option<(String, mesh_discover::Follow)>>,
    tls: Option<mesh_tls::Credentials>,
}

impl std::fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClient")
            .field("service", &self.inner.name)
            .field("profile", &self.inner.config.profile)
            .finish_non_exhaustive()
    }
}

/// Builds a [`MeshClient`]: its configuration plus what only code can
/// give (the local service's health checks).
#[derive(Debug)]
pub struct MeshClientBuilder {
    config: MeshConfig,
    checks: Vec<HealthCheck>,
}

impl MeshClientBuilder {
    /// Adds a health check of the local service, built as it is. Its
    /// probes are served by [`MeshClient::health_layer`].
    pub fn check(mut self, check: HealthCheck) -> Self {
        self.checks.push(check);
        self
    }

    /// Adds a check named `name` running `run` for `probes`, with the
    /// configuration's `[health]` defaults (the probes' interval, timeout,
    /// thresholds).
    pub fn check_with<F, Fut>(
        mut self,
        name: &str,
        probes: impl IntoIterator<Item = Probe>,
        run: F,
    ) -> Result<Self, MeshError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), mesh_health::CheckError>> + Send + 'static,
    {
        let defaults = self.config.health.clone().unwrap_or_default();
        self.checks.push(defaults.check(name, probes, run).build()?);
        Ok(self)
    }

    /// Builds and starts the client (see [`MeshClient::from_config`]).
    pub async fn build(self) -> Result<MeshClient, MeshError> {
        MeshClient::start(self.config, self.checks).await
    }
}

impl MeshClient {
    /// Starts from a configuration; add health checks on the builder.
    pub fn builder(config: MeshConfig) -> MeshClientBuilder {
        MeshClientBuilder {
            config,
            checks: Vec::new(),
        }
    }

    /// Builds and starts the client: discovery (and its watches), the
    /// health manager, upstream health checks, certificate watching, and
    /// registration with Consul when configured. Needs a tokio runtime.
    pub async fn from_config(config: MeshConfig) -> Result<MeshClient, MeshError> {
        Self::start(config, Vec::new()).await
    }

    async fn start(config: MeshConfig, checks: Vec<HealthCheck>) -> Result<MeshClient, MeshError> {
        config.validate()?;
        let name =
            ServiceName::new(&config.service.name).map_err(|e| MeshError::InvalidConfig {
                what: "service.name".to_owned(),
                reason: e.to_string(),
            })?;
        let bus = EventBus::new(config.event_capacity);
        let identities = config.identities()?;

        // A registry-backed catalog: services followed on their first
        // call, which waits up to 5 s for the registry's first answer.
        let followed = |registry: Arc<dyn Registry>| {
            let catalog = Catalog::new(bus.clone());
            let layer =
                DiscoverLayer::with_registry(catalog.clone(), registry, Duration::from_secs(5));
            let layer = match config.max_staleness {
                Some(limit) => layer.max_staleness(limit),
                None => layer,
            };
            (catalog, layer)
        };
        let (catalog, discover, consul) = match &config.discovery {
            DiscoveryConfig::Static { services } => {
                let mut builder = StaticRegistry::builder().events(bus.clone());
                for (service, entries) in services {
                    builder = builder.service(service, entries.iter().cloned());
                }
                let catalog = builder.build()?.catalog();
                (catalog.clone(), DiscoverLayer::new(catalog), None)
            }
            DiscoveryConfig::File { path, check_every } => {
                // Read once now: a missing or malformed file fails the
                // start, naming the file, instead of every first call.
                let mut registry = FileRegistry::open(path).map_err(|e| e.within("discovery."))?;
                if let Some(every) = check_every {
                    registry = registry.check_every(*every);
                }
                let (catalog, layer) = followed(Arc::new(registry));
                (catalog, layer, None)
            }
            DiscoveryConfig::Consul {
                url,
                token,
                datacenter,
                tags,
                ..
            } => {
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
                let consul = builder.build()?;
                let (catalog, layer) = followed(Arc::new(consul.clone()));
                (catalog, layer, Some(consul))
            }
            DiscoveryConfig::Kubernetes {
                port,
                port_name,
                namespace,
                zone,
                nameserver,
            } => {
                let source = match (port, port_name) {
                    (Some(port), _) => PortSource::Fixed(*port),
                    (None, Some(name)) => PortSource::Srv {
                        name: name.clone(),
                        protocol: "tcp".to_owned(),
                    },
                    // Refused by validation; 80 keeps this total.
                    (None, None) => PortSource::Fixed(80),
                };
                let mut builder = KubernetesDnsRegistry::builder(source);
                if let Some(ns) = namespace {
                    builder = builder.namespace(ns.clone());
                }
                if let Some(zone) = zone {
                    builder = builder.zone(zone.clone());
                }
                if let Some(addr) = nameserver {
                    builder = builder.nameserver(*addr);
                }
                let registry = builder.build()?;
                let (catalog, layer) = followed(Arc::new(registry));
                (catalog, layer, None)
            }
        };

        let health = match (&config.health, checks.is_empty()) {
            (None, true) => None,
            _ => {
                let mut builder = HealthCheckManager::builder().events(bus.clone());
                for check in checks {
                    builder = builder.check(check);
                }
                let manager = builder.build()?;
                manager.start();
                Some(manager)
            }
        };

        let splits = Arc::new(Splits::default());
        for (service, o) in &config.services {
            if let (Ok(name), false) = (ServiceName::new(service), o.split.is_empty()) {
                splits.set(name, o.split.clone());
            }
        }
        let tls = match config.tls.as_ref().filter(|t| t.enabled) {
            None => None,
            Some(tls) => Some((
                tls,
                tls.credentials()
                    .map_err(tls_error)?
                    .with_events(bus.clone()),
            )),
        };
        let transports = Transports::new(
            tls.as_ref()
                .map(|(config, credentials)| (*config, credentials, identities)),
            &catalog,
        );
        let tls = tls.map(|(_, credentials)| credentials);
        let default = build_route(
            &config,
            "",
            &discover,
            &splits,
            transports.pick(false, false),
            &bus,
        )?;
        // Services named in the configuration get their own layers.
        let mut routes = HashMap::new();
        for (service, o) in &config.services {
            if let Ok(name) = ServiceName::new(service) {
                let http2 = o.protocol == crate::config::Protocol::H2c;
                let transport = transports.pick(http2, o.plaintext);
                let route = build_route(&config, service, &discover, &splits, transport, &bus)?;
                routes.insert(name, route);
            }
        }
        let client = MeshClient {
            inner: Arc::new(Inner {
                name,
                bus,
                catalog,
                discover,
                splits,
                default,
                routes,
                services: ServiceStates::default(),
                transports,
                closed: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                drained: Notify::new(),
                health,
                consul,
                registered: Mutex::new(None),
                tls,
                config,
            }),
        };
        client.register().await?;
        Ok(client)
    }

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
        &self.inner.catalog
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
    pub fn set_split(&self, service: &str, subsets: Vec<Subset>) -> Result<(), MeshError> {
        let name = ServiceName::new(service).map_err(|e| MeshError::InvalidConfig {
            what: format!("split of {service:?}"),
            reason: e.to_string(),
        })?;
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

    /// The same counters in the Prometheus text exposition format, for a
    /// `/metrics` endpoint.
    pub fn prometheus(&self) -> String {
        crate::prometheus::render(&self.metrics())
    }

    pub(crate) fn routes(&self) -> Vec<(String, Route)> {
        let mut routes = vec![("*".to_owned(), self.inner.default.clone())];
        routes.extend(
            self.inner
                .routes
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone())),
        );
        routes
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    pub(crate) fn tls(&self) -> Option<&mesh_tls::Credentials> {
        self.inner.tls.as_ref()
    }

    /// The server side of this service's mutual TLS, for its own axum or
    /// hyper server (`server_tls.serve(listener, router)`): the client's
    /// rotating credentials, admitting only the callers `[tls]
    /// allowed_callers` lists (any certificate of the CA when the list is
    /// empty). `None` while `[tls]` is off.
    pub fn server_tls(&self) -> Result<Option<mesh_tls::ServerTls>, MeshError> {
        let (Some(config), Some(credentials)) = (&self.inner.config.tls, &self.inner.tls) else {
            return Ok(None);
        };
        config
            .server(credentials.clone())
            .map(Some)
            .map_err(tls_error)
    }

    /// The layers for `service`: its own when the configuration overrides
    /// it, else the shared default ones.
    fn route(&self, service: &ServiceName) -> &Stack {
        self.inner
            .routes
            .get(service)
            .map_or(&self.inner.default.stack, |r| &r.stack)
    }

    /// What the client keeps for `service`, made on its first call (see
    /// [`crate::services`] for how it stays bounded).
    fn service_state(&self, service: &ServiceName) -> Result<Arc<ServiceState>, MeshError> {
        let inner = &self.inner;
        inner.services.get_or_insert(
            service,
            |name| self.knows(name),
            || ServiceState {
                limits: inner
                    .config
                    .limits_for(service.as_str())
                    .map(crate::limits::Limits::new),
                budget: inner
                    .config
                    .retry_for(service.as_str())
                    .ok()
                    .and_then(|retry| retry.new_budget()),
                checker: Default::default(),
            },
        )
    }

    /// Whether the configuration or discovery knows `service`.
    fn knows(&self, service: &ServiceName) -> bool {
        self.inner.config.services.contains_key(service.as_str())
            || self.inner.catalog.get(service.as_str()).is_some()
    }

    /// Starts `service`'s upstream checker once discovery knows it.
    fn check_upstream(&self, service: &ServiceName, state: &ServiceState) {
        if state.checker.get().is_some() || self.inner.catalog.get(service.as_str()).is_none() {
            return;
        }
        state.checker.get_or_init(|| self.upstream_checker(service));
    }

    fn upstream_checker(&self, service: &ServiceName) -> Option<UpstreamHealthChecker> {
        let config = self.inner.config.upstream_health.as_ref()?;
        let catalog = self.inner.catalog.clone();
        let name = service.clone();
        let mut builder =
            UpstreamHealthChecker::builder(service.clone(), config.clone(), move || {
                catalog.get(name.as_str())
            })
            .events(self.inner.bus.clone());
        let plaintext =
            (self.inner.config.services.get(service.as_str())).is_some_and(|o| o.plaintext);
        match self.inner.transports.probe_client(service, plaintext) {
            Ok(None) => {}
            Ok(Some(client)) => builder = builder.client(client, http::uri::Scheme::HTTPS),
            Err(error) => {
                // Never probe in plaintext what is called over mutual TLS.
                tracing::warn!(%service, %error, "upstream health checks not started");
                return None;
            }
        }
        builder
            .spawn()
            .map_err(|error| tracing::warn!(%service, %error, "upstream health checks not started"))
            .ok()
    }

    /// Sends `req` through the stack of the service its URI's host names
    /// (`http://users/api/users`).
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<MeshBody>, BoxError> {
        self.send_with(req, None).await
    }

    async fn send_with(
        &self,
        mut req: Request<Full<Bytes>>,
        timeout: Option<Duration>,
    ) -> Result<Response<MeshBody>, BoxError> {
        let mut guard = self.enter()?;
        let service = match req.extensions().get::<TargetService>() {
            Some(TargetService(service)) => service.clone(),
            None => {
                let host = req.uri().host().ok_or(MeshError::MissingAuthority)?;
                let service =
                    ServiceName::new(host).map_err(|source| MeshError::InvalidAuthority {
                        authority: host.to_owned(),
                        source,
                    })?;
                req.extensions_mut().insert(TargetService(service.clone()));
                service
            }
        };
        let state = self.service_state(&service)?;
        if let Some(limits) = &state.limits {
            guard._admission = Some(limits.admit(&service)?);
        }
        if let Some(budget) = &state.budget {
            req.extensions_mut().insert(budget.clone());
        }
        if let Some(limit) = timeout {
            // Retries read it: no backoff is started that would end past it.
            req.extensions_mut()
                .insert(Deadline(clock::now().saturating_add(limit)));
        }
        let started = tokio::time::Instant::now();
        let call = self.route(&service).clone().oneshot(req);
        let outcome = match timeout {
            None => call.await,
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(outcome) => outcome,
                Err(_) => Err(MeshError::Timeout { after: limit }.into()),
            },
        };
        match &outcome {
            Err(error) if is_unknown(&**error) && !self.knows(&service) => {
                self.inner.services.remove(&service)
            }
            _ => self.check_upstream(&service, &state),
        }
        // Per-call events cost a clone and a publish: only while someone
        // listens.
        if self.inner.bus.subscriber_count() > 0 {
            let elapsed = started.elapsed();
            let event = match &outcome {
                Ok(response) => MeshEvent::RequestCompleted {
                    service,
                    endpoint: response
                        .extensions()
                        .get::<SelectedEndpoint>()
                        .map(|e| e.0.id().clone()),
                    status: Some(response.status().as_u16()),
                    error: None,
                    elapsed,
                },
                Err(error) => MeshEvent::RequestCompleted {
                    service,
                    endpoint: MeshError::find(&**error).and_then(|e| match e {
                        MeshError::Endpoint { endpoint, .. } => Some(endpoint.clone()),
                        _ => None,
                    }),
                    status: None,
                    error: Some(error.to_string()),
                    elapsed,
                },
            };
            self.inner.bus.publish(event);
        }
        outcome.map(|response| {
            response.map(|inner| MeshBody {
                inner,
                call: Some(guard),
            })
        })
    }

    /// Sends `method` to `service` at `path` (the design document's
    /// `get`/`post`/... with headers, body, timeout and client id).
    pub async fn request(
        &self,
        method: Method,
        service: &str,
        path: &str,
        body: Bytes,
        options: CallOptions,
    ) -> Result<Response<MeshBody>, BoxError> {
        let service = ServiceName::new(service).map_err(|source| MeshError::InvalidAuthority {
            authority: service.to_owned(),
            source,
        })?;
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{service}{path}"))
            .body(Full::new(body))?;
        req.headers_mut().extend(options.headers);
        if let Some(key) = options.affinity_key {
            req.extensions_mut().insert(AffinityKey::new(key));
        }
        req.extensions_mut().insert(TargetService(service));
        self.send_with(req, options.timeout).await
    }

    /// `GET` (the design document's `get("user-service", "/api/users", { clientId })`).
    pub async fn get(
        &self,
        service: &str,
        path: &str,
        options: CallOptions,
    ) -> Result<Response<MeshBody>, BoxError> {
        self.request(Method::GET, service, path, Bytes::new(), options)
            .await
    }

    /// `POST` with `body`.
    pub async fn post(
        &self,
        service: &str,
        path: &str,
        body: impl Into<Bytes>,
        options: CallOptions,
    ) -> Result<Response<MeshBody>, BoxError> {
        self.request(Method::POST, service, path, body.into(), options)
            .await
    }

    /// `PUT` with `body`.
    pub async fn put(
        &self,
        service: &str,
        path: &str,
        body: impl Into<Bytes>,
        options: CallOptions,
    ) -> Result<Response<MeshBody>, BoxError> {
        self.request(Method::PUT, service, path, body.into(), options)
            .await
    }

    /// `DELETE`.
    pub async fn delete(
        &self,
        service: &str,
        path: &str,
        options: CallOptions,
    ) -> Result<Response<MeshBody>, BoxError> {
        self.request(Method::DELETE, service, path, Bytes::new(), options)
            .await
    }

    /// Registers the local service with the Consul agent (when the
    /// configuration says `register = true`), with a TTL check kept
    /// passing by heartbeats.
    async fn register(&self) -> Result<(), MeshError> {
        let DiscoveryConfig::Consul { register: true, .. } = &self.inner.config.discovery else {
            return Ok(());
        };
        let (Some(consul), Some(address), Some(port)) = (
            &self.inner.consul,
            self.inner.config.service.address,
            self.inner.config.service.port,
        ) else {
            return Ok(());
        };
        let id = format!("{}-{address}-{port}", self.inner.name);
        let registration = Registration {
            id: id.clone(),
            name: self.inner.name.to_string(),
            address,
            port,
            tags: self.inner.config.service.tags.clone(),
            meta: Default::default(),
            check: Some(AgentCheck::Ttl {
                ttl: Duration::from_secs(30),
            }),
            deregister_critical_after: Some(Duration::from_secs(300)),
        };
        consul
            .register(&registration)
            .await
            .map_err(|e| MeshError::InvalidConfig {
                what: "discovery.register".to_owned(),
                reason: format!("registering with Consul failed: {e}"),
            })?;
        let heartbeat = consul.heartbeat(registration, Duration::from_secs(10));
        if let Ok(mut registered) = self.inner.registered.lock() {
            *registered = Some((id, heartbeat));
        }
        Ok(())
    }

    /// Graceful shutdown: readiness fails at once and the local service
    /// leaves Consul (heartbeat stopped, then deregistered), so callers
    /// stop sending; new calls are refused; calls in flight (their
    /// response bodies included) get up to `drain` to finish, and are not
    /// cancelled; then the background tasks stop: health checks, upstream
    /// checks, discovery watches and certificate watching. Returns how many
    /// calls were still in flight when the drain ended (0 when all
    /// finished).
    pub async fn shutdown(&self, drain: Duration) -> usize {
        self.inner.closed.store(true, Ordering::SeqCst);
        if let Some(health) = &self.inner.health {
            health.shutdown();
        }
        let registered = self.inner.registered.lock().ok().and_then(|mut r| r.take());
        if let (Some((id, heartbeat)), Some(consul)) = (registered, &self.inner.consul) {
            // Heartbeat first, so none re-registers after the deregister.
            drop(heartbeat);
            if let Err(error) = consul.deregister(&id).await {
                tracing::warn!(%error, "deregistering from Consul failed");
            }
        }
        let deadline = tokio::time::Instant::now() + drain;
        loop {
            let waiting = self.inner.drained.notified();
            if self.in_flight() == 0 || tokio::time::Instant::now() >= deadline {
                break;
            }
            let _ = tokio::time::timeout_at(deadline, waiting).await;
        }
        let left = self.in_flight();
        if left > 0 {
            tracing::warn!(left, "shutdown: calls still in flight after the drain");
        }
        // Dropping the per-service state stops the upstream checkers.
        self.inner.services.clear();
        self.inner.discover.stop_following();
        if let Some(tls) = &self.inner.tls {
            tls.stop_watching();
        }
        left
    }

    fn enter(&self) -> Result<CallGuard, MeshError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(MeshError::ShuttingDown {
                service: self.inner.name.clone(),
            });
        }
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = CallGuard {
            inner: Arc::clone(&self.inner),
            _admission: None,
        };
        // Closed between the check and the count: undo (the guard's drop)
        // and refuse.
        if self.inner.closed.load(Ordering::SeqCst) {
            drop(guard);
            return Err(MeshError::ShuttingDown {
                service: self.inner.name.clone(),
            });
        }
        Ok(guard)
    }
}

/// One call counted as in flight (and holding its limit admission) until
/// dropped: with the response body when there is one.
struct CallGuard {
    inner: Arc<Inner>,
    _admission: Option<crate::limits::Admission>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.inner.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.drained.notify_waiters();
        }
    }
}

/// Whether `error` says no registry lists the service.
fn is_unknown(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        MeshError::find(error),
        Some(MeshError::UnknownService { .. })
    )
}

fn tls_error(e: mesh_tls::TlsError) -> MeshError {
    MeshError::InvalidConfig {
        what: "tls".to_owned(),
        reason: e.to_string(),
    }
}

fn build_route(
    config: &MeshConfig,
    service: &str,
    discover: &DiscoverLayer,
    splits: &Arc<Splits>,
    transport: &Transport,
    bus: &EventBus,
) -> Result<Route, MeshError> {
    let retry = RetryLayer::new(config.retry_for(service)?).events(bus.clone());
    let balance = BalanceLayer::from_config(config.balance_for(service)).events(bus.clone());
    let breaker = BreakerLayer::new(config.breaker_for(service)?).events(bus.clone());
    let stack = ServiceBuilder::new()
        .layer(retry.clone())
        .layer(discover.clone())
        .layer(SplitLayer(Arc::clone(splits)))
        .layer(balance.clone())
        .layer(breaker.clone())
        .timeout(config.timeout_for(service))
        .service(transport.clone());
    Ok(Route {
        stack,
        balance,
        breaker,
        retry,
    })
}

/// The client as a channel for tonic (or any client whose requests carry
/// their own body type): each request body is read (up to 4 MiB: unary
/// calls and small streams) so retries can replay it, then sent through
/// the stack like [`MeshClient::send`].
///
/// ```no_run
/// # async fn run(client: mesh::MeshClient) -> Result<(), Box<dyn std::error::Error>> {
/// let grpc = tonic::client::Grpc::with_origin(client.grpc_channel(), "http://greeter".parse()?);
/// # let _ = grpc; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct GrpcChannel {
    client: MeshClient,
}

/// The largest request body a [`GrpcChannel`] reads.
const MAX_REQUEST_BODY: usize = 4 * 1024 * 1024;

impl MeshClient {
    /// This client as a channel for tonic's generated clients (route the
    /// service with `protocol = "h2c"` or over mutual TLS).
    pub fn grpc_channel(&self) -> GrpcChannel {
        GrpcChannel {
            client: self.clone(),
        }
    }
}

impl<B> Service<Request<B>> for GrpcChannel
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<MeshBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(
                body,
                MAX_REQUEST_BODY,
            ))
            .await?
            .to_bytes();
            client
                .send(Request::from_parts(parts, Full::new(body)))
                .await
        })
    }
}

/// The client as a tower service: requests go to the service their URI's
/// host names (`http://users/...`), so it can sit under a tonic client or
/// anything that expects a `Service<http::Request<_>>`.
impl Service<Request<Full<Bytes>>> for MeshClient {
    type Response = Response<MeshBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each call clones the per-service stack, which is always ready to
        // be driven by oneshot.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(req).await })
    }
}
