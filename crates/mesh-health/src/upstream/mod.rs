//! Active health checking of upstream endpoints: each discovered endpoint
//! probed at an interval, its verdict written into its shared
//! [`EndpointState`](mesh_core::EndpointState) for the balancer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http_body_util::Empty;
use mesh_core::ext::{SelectedEndpoint, TargetService};
use mesh_core::{
    ConfigError, Endpoint, EndpointId, EndpointSet, EndpointState, EventBus, Health, ServiceName,
};

use crate::probe::ProbeClient;

mod config;
mod verdict;

pub use config::{UpstreamCheckConfig, UpstreamProbe};
use verdict::{judge, Tracked};

/// Probes every endpoint of one service in the background and writes the
/// verdicts into their shared state, so the balancer skips unhealthy
/// ones. Stops when dropped.
///
/// The endpoints come from `source`, read before every round and every
/// 100 ms between rounds (a `Catalog::get` in practice: a lock-free load):
/// a new endpoint is probed at once, removed ones stop being probed. A
/// round probes every endpoint concurrently, at most 64 at a time. An
/// endpoint becomes unhealthy after `unhealthy_threshold` failed probes in
/// a row and healthy again after `healthy_threshold` passed ones; a newly
/// seen endpoint is marked healthy by its first passed probe. Verdicts are
/// written with a compare-and-set, so an endpoint someone set draining
/// stays draining. Dropping the checker stops it and hands its verdicts
/// back (`Unknown`): endpoints it condemned are not left out for good.
#[derive(Debug)]
pub struct UpstreamHealthChecker {
    task: tokio::task::JoinHandle<()>,
    tracked: Arc<AtomicUsize>,
    judged: Arc<Mutex<Vec<Arc<EndpointState>>>>,
}

impl Drop for UpstreamHealthChecker {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(judged) = self.judged.lock() {
            for state in judged.iter() {
                if !state.compare_and_set_health(Health::Unhealthy, Health::Unknown) {
                    state.compare_and_set_health(Health::Healthy, Health::Unknown);
                }
            }
        }
    }
}

/// Endpoints probed at once in a round.
const MAX_CONCURRENT_PROBES: usize = 64;

/// How often the source is read between rounds, to probe new endpoints
/// without waiting for the next round.
const WATCH_STEP: Duration = Duration::from_millis(100);

impl UpstreamHealthChecker {
    /// Starts probing `service`'s endpoints as `source` lists them, over
    /// plain HTTP for HTTP probes (needs a tokio runtime). The same as
    /// `UpstreamHealthChecker::builder(service, config, source)`, with
    /// `.events(bus)` when `events` is given, then `.spawn()`.
    pub fn spawn<F>(
        service: ServiceName,
        config: UpstreamCheckConfig,
        source: F,
        events: Option<EventBus>,
    ) -> Result<Self, ConfigError>
    where
        F: Fn() -> Option<EndpointSet> + Send + Sync + 'static,
    {
        let builder = UpstreamHealthChecker::builder(service, config, source);
        match events {
            Some(bus) => builder.events(bus),
            None => builder,
        }
        .spawn()
    }

    /// A checker of `service`'s endpoints as `source` lists them, to be
    /// given a client and an event bus before it is spawned.
    ///
    /// ```no_run
    /// use http::uri::Scheme;
    /// use mesh_core::{EndpointSet, EventBus, ServiceName};
    /// use mesh_health::{ProbeClient, UpstreamCheckConfig, UpstreamHealthChecker};
    /// # fn tls_client() -> ProbeClient { ProbeClient::plaintext() }
    /// # fn current_users() -> Option<EndpointSet> { None }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let checker = UpstreamHealthChecker::builder(
    ///     ServiceName::new("users")?,
    ///     UpstreamCheckConfig::default(),
    ///     current_users,
    /// )
    /// .client(tls_client(), Scheme::HTTPS) // probes GET https://<ip>:<port><path>
    /// .events(EventBus::new(64))
    /// .spawn()?;
    /// # drop(checker); Ok(()) }
    /// ```
    pub fn builder<F>(
        service: ServiceName,
        config: UpstreamCheckConfig,
        source: F,
    ) -> UpstreamHealthCheckerBuilder<F>
    where
        F: Fn() -> Option<EndpointSet> + Send + Sync + 'static,
    {
        UpstreamHealthCheckerBuilder {
            service,
            config,
            source,
            events: None,
            client: None,
        }
    }

    /// How many endpoints are being probed now.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }
}

/// Sets up an [`UpstreamHealthChecker`]; made by
/// [`UpstreamHealthChecker::builder`].
pub struct UpstreamHealthCheckerBuilder<F> {
    service: ServiceName,
    config: UpstreamCheckConfig,
    source: F,
    events: Option<EventBus>,
    client: Option<(ProbeClient, Scheme)>,
}

// === impl UpstreamHealthCheckerBuilder ===

impl<F> UpstreamHealthCheckerBuilder<F>
where
    F: Fn() -> Option<EndpointSet> + Send + Sync + 'static,
{
    /// Sends HTTP probes through `client`, to
    /// `<scheme>://<ip>:<port><path>` (`http` or `https`). Without it,
    /// probes use a plain HTTP client of their own and the `http` scheme.
    ///
    /// Each probe request carries the extensions
    /// [`TargetService`] (this service) and [`SelectedEndpoint`] (the
    /// endpoint probed), so the client can pick the peer identity it
    /// expects. TCP probes only connect: they send no byte and use no
    /// client.
    pub fn client(mut self, client: ProbeClient, scheme: Scheme) -> Self {
        self.client = Some((client, scheme));
        self
    }

    /// Publishes `EndpointHealthChanged` on `bus`.
    pub fn events(mut self, bus: EventBus) -> Self {
        self.events = Some(bus);
        self
    }

    /// Validates the configuration and the scheme, and starts probing
    /// (needs a tokio runtime). Stops when the checker is dropped.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] from [`UpstreamCheckConfig::validate`], or
    /// `health.upstream.scheme` for a scheme other than `http` or `https`.
    pub fn spawn(self) -> Result<UpstreamHealthChecker, ConfigError> {
        self.config.validate()?;
        let (client, scheme) = match self.client {
            Some((client, scheme)) => {
                if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
                    return Err(ConfigError::new(
                        "health.upstream.scheme",
                        format!("{scheme:?} is neither http nor https"),
                    ));
                }
                (client, scheme)
            }
            None => (ProbeClient::plaintext(), Scheme::HTTP),
        };
        let tracked = Arc::new(AtomicUsize::new(0));
        let judged = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(run(
            Prober {
                service: self.service,
                config: self.config,
                client,
                scheme,
                events: self.events,
            },
            self.source,
            Arc::clone(&tracked),
            Arc::clone(&judged),
        ));
        Ok(UpstreamHealthChecker {
            task,
            tracked,
            judged,
        })
    }
}

impl<F> std::fmt::Debug for UpstreamHealthCheckerBuilder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamHealthCheckerBuilder")
            .field("service", &self.service)
            .field("config", &self.config)
            .field("scheme", &self.client.as_ref().map(|(_, scheme)| scheme))
            .finish_non_exhaustive()
    }
}

/// What every probe of a checker shares: whom it probes, how, through
/// what, and where verdicts are told.
struct Prober {
    service: ServiceName,
    config: UpstreamCheckConfig,
    client: ProbeClient,
    scheme: Scheme,
    events: Option<EventBus>,
}

async fn run<F>(
    prober: Prober,
    source: F,
    count: Arc<AtomicUsize>,
    judged: Arc<Mutex<Vec<Arc<EndpointState>>>>,
) where
    F: Fn() -> Option<EndpointSet>,
{
    let prober = Arc::new(prober);
    let config = &prober.config;
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_PROBES));
    let mut tracked: HashMap<EndpointId, Tracked> = HashMap::new();
    loop {
        let set = source();
        let endpoints: &[Endpoint] = set.as_ref().map_or(&[], |s| s.endpoints());
        // Forget endpoints discovery removed (or moved: a new address is a
        // new endpoint state).
        tracked.retain(|id, t| {
            endpoints
                .iter()
                .any(|e| e.id() == id && Arc::ptr_eq(e.state(), t.endpoint.state()))
        });
        for endpoint in endpoints {
            tracked.entry(endpoint.id().clone()).or_insert_with(|| {
                if config.unhealthy_until_checked && endpoint.state().health() == Health::Unknown {
                    endpoint.state().set_health(Health::Unhealthy);
                }
                Tracked {
                    endpoint: endpoint.clone(),
                    successes: 0,
                    failures: 0,
                    checked: false,
                }
            });
        }
        count.store(tracked.len(), Ordering::Relaxed);
        if let Ok(mut judged) = judged.lock() {
            *judged = tracked
                .values()
                .map(|t| Arc::clone(t.endpoint.state()))
                .collect();
        }

        // Probe them all at once.
        let mut probes = tokio::task::JoinSet::new();
        for (id, t) in &tracked {
            let (id, endpoint) = (id.clone(), t.endpoint.clone());
            let (prober, permits) = (Arc::clone(&prober), Arc::clone(&permits));
            probes.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let timeout = prober.config.timeout;
                let outcome = tokio::time::timeout(timeout, prober.probe_once(endpoint))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
                (id, outcome)
            });
        }
        while let Some(joined) = probes.join_next().await {
            let Ok((id, outcome)) = joined else { continue };
            if let Some(t) = tracked.get_mut(&id) {
                judge(&prober.service, t, outcome, config, prober.events.as_ref());
            }
        }

        // Until the next round; early if discovery brings a new endpoint.
        let next =
            tokio::time::Instant::now() + config.interval + config.jitter.mul_f64(fastrand::f64());
        loop {
            let now = tokio::time::Instant::now();
            if now >= next {
                break;
            }
            tokio::time::sleep_until(next.min(now + WATCH_STEP)).await;
            let fresh = source().is_some_and(|set| {
                set.endpoints()
                    .iter()
                    .any(|e| !tracked.contains_key(e.id()))
            });
            if fresh {
                break;
            }
        }
    }
}

// === impl Prober ===

impl Prober {
    /// One probe of `endpoint`: a TCP connect, or a GET through the client
    /// whose status must be 2xx or 3xx.
    async fn probe_once(&self, endpoint: Endpoint) -> Result<(), String> {
        let addr = endpoint.address();
        let path = match &self.config.probe {
            UpstreamProbe::Tcp => {
                return tokio::net::TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| format!("connect {addr}: {e}"));
            }
            UpstreamProbe::Http { path } => path,
        };
        let uri = http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(addr.to_string())
            .path_and_query(path.as_str())
            .build()
            .map_err(|e| format!("probe URL for {addr}{path}: {e}"))?;
        let shown = format!("GET {uri}");
        let mut request = http::Request::get(uri)
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("{shown}: {e}"))?;
        request
            .extensions_mut()
            .insert(TargetService(self.service.clone()));
        request.extensions_mut().insert(SelectedEndpoint(endpoint));
        let response = self
            .client
            .send(request)
            .await
            .map_err(|e| format!("{shown}: {}", mesh_core::error_chain(&*e)))?;
        let status = response.status();
        // Read (a bounded part of) the body so a small one lets the
        // connection be reused.
        let _ = crate::checks::read_prefix(response.into_body(), 64 * 1024).await;
        match status.is_success() || status.is_redirection() {
            true => Ok(()),
            false => Err(format!("{shown}: status {status}")),
        }
    }
}
