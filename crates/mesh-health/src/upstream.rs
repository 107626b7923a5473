//! Active health checking of upstream endpoints: each discovered endpoint
//! probed at an interval, its verdict written into its shared
//! [`EndpointState`](mesh_core::EndpointState) for the balancer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::{
    Endpoint, EndpointId, EndpointSet, EventBus, Health, MeshError, MeshEvent, ServiceName,
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
    /// Time between probes of an endpoint (the design document's
    /// `healthCheckInterval`).
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
        if self.interval < Duration::from_millis(10) {
            return invalid("interval", format!("{:?} is below 10ms", self.interval));
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return invalid(
                "timeout",
                format!(
                    "{:?} must be above zero and at most the interval",
                    self.timeout
                ),
            );
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
/// The endpoints come from `source`, read before every round (a
/// `Catalog::get` in practice: a lock-free load): new endpoints start
/// being probed, removed ones stop. An endpoint becomes unhealthy after
/// `unhealthy_threshold` failed probes in a row and healthy again after
/// `healthy_threshold` passed ones; a newly seen endpoint is marked healthy
/// by its first passed probe. Endpoints someone else set draining are
/// left alone.
#[derive(Debug)]
pub struct UpstreamHealthChecker {
    task: tokio::task::JoinHandle<()>,
    tracked: Arc<AtomicUsize>,
}

impl Drop for UpstreamHealthChecker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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
        let task = tokio::spawn(run(service, config, source, events, Arc::clone(&tracked)));
        Ok(UpstreamHealthChecker { task, tracked })
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
) where
    F: Fn() -> Option<EndpointSet>,
{
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

        // Probe them all at once.
        let mut probes = tokio::task::JoinSet::new();
        for (id, t) in &tracked {
            let (id, addr) = (id.clone(), t.endpoint.address());
            let (probe, timeout, client) = (config.probe.clone(), config.timeout, client.clone());
            probes.spawn(async move {
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

        let jitter = config.jitter.mul_f64(fastrand::f64());
        tokio::time::sleep(config.interval + jitter).await;
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
    state.set_health(after);
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
            // Read (and drop) the body so the connection can be reused.
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
            match status.is_success() || status.is_redirection() {
                true => Ok(()),
                false => Err(format!("GET http://{addr}{path}: status {status}")),
            }
        }
    }
}
