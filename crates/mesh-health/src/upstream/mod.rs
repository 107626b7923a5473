//! Active health checking of upstream endpoints: each discovered endpoint
//! probed at an interval, its verdict written into its shared
//! [`EndpointState`](mesh_core::EndpointState) for the balancer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http_body_util::Empty;
use mesh_core::ext::{SelectedEndpoint, TargetService};
use mesh_core::{
    ConfigError, Endpoint, EndpointId, EndpointSet, EndpointState, EventBus, Health, ServiceName,
};

use crate::grpc::GrpcProbeClient;
use crate::probe::ProbeClient;
use crate::redact::Redacted;

mod builder;
mod config;
mod grpc;
mod verdict;
mod watch;

pub use builder::UpstreamHealthCheckerBuilder;
pub use config::{UpstreamCheckConfig, UpstreamProbe};
use verdict::{judge, Tracked};
use watch::Follower;

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
///
/// A gRPC probe ([`UpstreamProbe::Grpc`]) sends a `grpc.health.v1`
/// `Check` each round. With `watch`, each endpoint's `Watch` stream is
/// followed instead, on a task of its own: a streamed `NOT_SERVING`
/// ejects the endpoint and `SERVING` readmits it the moment they arrive,
/// thresholds aside. An endpoint whose server answers `UNIMPLEMENTED`
/// (no `Watch`) is `Check`ed each round from then on; one whose stream
/// breaks is `Check`ed each round until a new stream answers (asked for
/// again after a backoff from the interval up to 30 s).
#[derive(Debug)]
pub struct UpstreamHealthChecker {
    task: tokio::task::JoinHandle<()>,
    tracked: Arc<AtomicUsize>,
    judged: Arc<Mutex<Vec<Arc<EndpointState>>>>,
    /// Closed on drop, so `Watch` followers write no verdict after it.
    open: Arc<Mutex<bool>>,
}

impl Drop for UpstreamHealthChecker {
    fn drop(&mut self) {
        self.task.abort();
        // Held while the verdicts are handed back: a follower writing one
        // now waits, then sees the gate closed.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        *open = false;
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
            grpc_client: None,
        }
    }

    /// How many endpoints are being probed now.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }
}

/// What every probe of a checker shares: whom it probes, how, through
/// what, and where verdicts are told.
struct Prober {
    service: ServiceName,
    config: UpstreamCheckConfig,
    client: ProbeClient,
    scheme: Scheme,
    grpc_client: GrpcProbeClient,
    grpc_scheme: Scheme,
    events: Option<EventBus>,
    /// Whether verdicts may still be written (see `verdict::declare`).
    open: Arc<Mutex<bool>>,
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
                let follower = match &config.probe {
                    UpstreamProbe::Grpc {
                        service,
                        watch: true,
                    } => Some(Follower::spawn(
                        Arc::clone(&prober),
                        endpoint.clone(),
                        service.clone(),
                    )),
                    _ => None,
                };
                Tracked {
                    endpoint: endpoint.clone(),
                    successes: 0,
                    failures: 0,
                    checked: false,
                    follower,
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
        for (id, t) in &mut tracked {
            if !t.polled() {
                // Its stream judges it; should the stream break, the
                // thresholds count from zero.
                (t.successes, t.failures) = (0, 0);
                continue;
            }
            let (id, endpoint) = (id.clone(), t.endpoint.clone());
            let (prober, permits) = (Arc::clone(&prober), Arc::clone(&permits));
            // A root span per probe: a background round, no caller's child.
            let span = tracing::debug_span!(
                parent: None,
                "mesh.health.probe",
                mesh.service = %prober.service,
                mesh.endpoint = %id,
                server.address = %endpoint.address().ip(),
                server.port = i64::from(endpoint.address().port()),
                mesh.outcome = tracing::field::Empty,
                error.type = tracing::field::Empty,
            );
            probes.spawn(tracing::Instrument::instrument(
                async move {
                    let _permit = permits.acquire_owned().await;
                    let timeout = prober.config.timeout;
                    let answered = tokio::time::timeout(timeout, prober.probe_once(endpoint)).await;
                    let span = tracing::Span::current();
                    match &answered {
                        Ok(Ok(())) => span.record("mesh.outcome", "success"),
                        // No answer in time and a wrong answer are told
                        // apart: the first is often the network's doing.
                        Ok(Err(_)) => span
                            .record("mesh.outcome", "failure")
                            .record("error.type", "probe_failed"),
                        Err(_) => span
                            .record("mesh.outcome", "failure")
                            .record("error.type", "timeout"),
                    };
                    let outcome =
                        answered.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
                    (id, outcome)
                },
                span,
            ));
        }
        while let Some(joined) = probes.join_next().await {
            let Ok((id, outcome)) = joined else { continue };
            // A stream that opened meanwhile is newer than this answer.
            if let Some(t) = tracked.get_mut(&id).filter(|t| t.polled()) {
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
    /// One probe of `endpoint`: a TCP connect, a GET through the client
    /// whose status must be 2xx or 3xx, or a gRPC health `Check`.
    async fn probe_once(&self, endpoint: Endpoint) -> Result<(), String> {
        let addr = endpoint.address();
        let path = match &self.config.probe {
            UpstreamProbe::Tcp => {
                return tokio::net::TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| format!("connect {addr}: {e}"));
            }
            UpstreamProbe::Grpc { service, .. } => {
                return self.grpc_check(endpoint, service).await;
            }
            UpstreamProbe::Http { path } => path,
        };
        let uri = http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(addr.to_string())
            .path_and_query(path.as_str())
            .build()
            .map_err(|e| format!("probe URL for {addr}: {e}"))?;
        let shown = format!("GET {}", Redacted(&uri));
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
