//! Active health checking of upstream endpoints: each discovered endpoint
//! probed at an interval, its verdict written into its shared
//! [`EndpointState`](mesh_core::EndpointState) for the balancer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::{
    Endpoint, EndpointId, EndpointSet, EndpointState, EventBus, Health, MeshError, MeshEvent,
    ServiceName,
};
use serde::{Deserialize, Serialize};

/// How an upstream endpoint is probed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum UpstreamProbe {
    /// A TCP connect.
    Tcp,
    /// An HTTP GET of `path` (sent with the endpoint's address as the
    /// authority); a status in 200-399 passes.
    Http {
        /// The path, say `/health/ready`.
        path: String,
    },
}

/// Active health checking of one service's endpoints, with Envoy's
/// thresholds.
///
/// ```
/// let config: mesh_health::UpstreamCheckConfig = serde_json::from_str(
///     r#"{ "probe": { "http": { "path": "/health/ready" } }, "interval": "5s", "unhealthy_threshold": 2 }"#,
/// )?;
/// config.validate()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamCheckConfig {
    /// TCP connect (the default) or an HTTP GET.
    #[serde(default = "default_probe")]
    pub probe: UpstreamProbe,
    /// Time between rounds of probes (the design document's
    /// `healthCheckInterval`), counted from the end of a round: the period
    /// is the interval, plus the jitter, plus the slowest probe.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Up to this much is added to each interval at random, so a fleet of
    /// clients does not probe in step.
    #[serde(default = "default_jitter", with = "humantime_serde")]
    pub jitter: Duration,
    /// How long a probe may take; longer is a failure.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Successes in a row that bring an unhealthy endpoint back.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Failures in a row that mark an endpoint unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Keep a newly discovered endpoint out of rotation until its first
    /// probe passes (by default it is usable at once).
    #[serde(default)]
    pub unhealthy_until_checked: bool,
}

fn default_probe() -> UpstreamProbe {
    UpstreamProbe::Tcp
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_jitter() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

impl Default for UpstreamCheckConfig {
    fn default() -> Self {
        UpstreamCheckConfig {
            probe: default_probe(),
            interval: default_interval(),
            jitter: default_jitter(),
            timeout: default_timeout(),
            healthy_threshold: default_healthy_threshold(),
            unhealthy_threshold: default_unhealthy_threshold(),
            unhealthy_until_checked: false,
        }
    }
}

impl UpstreamCheckConfig {
    /// Checks every value; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), MeshError> {
        let invalid = |what: &str, reason: String| {
            Err(MeshError::InvalidConfig {
                what: format!("health.upstream.{what}"),
                reason,
            })
        };
        if self.interval < Duration::from_millis(10) || self.interval > Duration::from_secs(86_400)
        {
            return invalid(
                "interval",
                format!("{:?} is outside [10ms, 24h]", self.interval),
            );
        }
        if self.jitter > self.interval {
            return invalid("jitter", format!("{:?} is above the interval", self.jitter));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return invalid("timeout", format!("{:?} is outside (0, 60s]", self.timeout));
        }
        if self.healthy_threshold == 0 {
            return invalid("healthy_threshold", "must be at least 1".to_owned());
        }
        if self.unhealthy_threshold == 0 {
            return invalid("unhealthy_threshold", "must be at least 1".to_owned());
        }
        if let UpstreamProbe::Http { path } = &self.probe {
            if !path.starts_with('/') {
                return invalid("probe.http.path", format!("{path:?} must start with '/'"));
            }
        }
        Ok(())
    }
}

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
    /// Starts probing `service`'s endpoints as `source` lists them (needs a
    /// tokio runtime).
    pub fn spawn<F>(
        service: ServiceName,
        config: UpstreamCheckConfig,
        source: F,
        events: Option<EventBus>,
    ) -> Result<Self, MeshError>
    where
        F: Fn() -> Option<EndpointSet> + Send + Sync + 'static,
    {
        config.validate()?;
        let tracked = Arc::new(AtomicUsize::new(0));
        let judged = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(run(
            service,
            config,
            source,
            events,
            Arc::clone(&tracked),
            Arc::clone(&judged),
        ));
        Ok(UpstreamHealthChecker {
            task,
            tracked,
            judged,
        })
    }

    /// How many endpoints are being probed now.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }
}

struct Tracked {
    endpoint: Endpoint,
    successes: u32,
    failures: u32,
    checked: bool,
}

async fn run<F>(
    service: ServiceName,
    config: UpstreamCheckConfig,
    source: F,
    events: Option<EventBus>,
    count: Arc<AtomicUsize>,
    judged: Arc<Mutex<Vec<Arc<EndpointState>>>>,
) where
    F: Fn() -> Option<EndpointSet>,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_PROBES));
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
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
            let (id, addr) = (id.clone(), t.endpoint.address());
            let (probe, timeout, client) = (config.probe.clone(), config.timeout, client.clone());
            let permits = Arc::clone(&permits);
            probes.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let outcome = tokio::time::timeout(timeout, probe_once(&client, &probe, addr))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
                (id, outcome)
            });
        }
        while let Some(joined) = probes.join_next().await {
            let Ok((id, outcome)) = joined else { continue };
            if let Some(t) = tracked.get_mut(&id) {
                judge(&service, t, outcome, &config, events.as_ref());
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

fn judge(
    service: &ServiceName,
    t: &mut Tracked,
    outcome: Result<(), String>,
    config: &UpstreamCheckConfig,
    events: Option<&EventBus>,
) {
    let state = t.endpoint.state();
    let before = state.health();
    let first = !t.checked;
    t.checked = true;
    let after = match outcome {
        Ok(()) => {
            t.failures = 0;
            t.successes = t.successes.saturating_add(1);
            match before {
                Health::Healthy | Health::Draining => return,
                // Never judged by us yet: one pass is enough.
                _ if first || before == Health::Unknown => Health::Healthy,
                _ if t.successes >= config.healthy_threshold => Health::Healthy,
                _ => return,
            }
        }
        Err(error) => {
            t.successes = 0;
            t.failures = t.failures.saturating_add(1);
            tracing::debug!(%service, endpoint = %t.endpoint, %error, failures = t.failures, "upstream probe failed");
            match before {
                Health::Unhealthy | Health::Draining => return,
                _ if t.failures >= config.unhealthy_threshold => Health::Unhealthy,
                _ => return,
            }
        }
    };
    if !state.compare_and_set_health(before, after) {
        // Changed meanwhile (set draining by someone else): leave it.
        return;
    }
    tracing::info!(%service, endpoint = %t.endpoint, from = ?before, to = ?after, "upstream health changed");
    if let Some(bus) = events {
        bus.publish(MeshEvent::EndpointHealthChanged {
            service: service.clone(),
            endpoint: t.endpoint.id().clone(),
            from: before,
            to: after,
        });
    }
}

async fn probe_once(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    probe: &UpstreamProbe,
    addr: std::net::SocketAddr,
) -> Result<(), String> {
    match probe {
        UpstreamProbe::Tcp => tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("connect {addr}: {e}")),
        UpstreamProbe::Http { path } => {
            let uri: http::Uri = format!("http://{addr}{path}")
                .parse()
                .map_err(|e| format!("probe URL: {e}"))?;
            let response = client
                .get(uri)
                .await
                .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
            let status = response.status();
            // Read (a bounded part of) the body so a small one lets the
            // connection be reused.
            let _ = crate::common::read_prefix(response.into_body(), 64 * 1024).await;
            match status.is_success() || status.is_redirection() {
                true => Ok(()),
                false => Err(format!("GET http://{addr}{path}: status {status}")),
            }
        }
    }
}
