//! [`MeshMetrics`]: every layer's counters in one serializable document
//! (the design document's `getMetrics()`).

use mesh_balance::BalanceLayer;
use mesh_breaker::{BreakerKey, BreakerLayer};
use mesh_health::HealthCheckManager;
use mesh_retry::RetryLayer;
use mesh_tls::Credentials;
use serde::Serialize;

use crate::client::MeshClient;

/// A point-in-time snapshot of a [`MeshClient`]'s counters.
#[derive(Clone, Debug, Serialize)]
pub struct MeshMetrics {
    /// The local service.
    pub service: String,
    /// Calls in flight through the client now.
    pub in_flight: usize,
    /// Per route (`*` for the shared default layers, else a service with
    /// its own configuration).
    pub routes: Vec<RouteMetrics>,
    /// The local service's health checks, when configured.
    pub health: Vec<HealthMetrics>,
    /// Mutual TLS, when configured.
    pub tls: Option<TlsMetrics>,
}

/// The counters of one route's layers.
#[derive(Clone, Debug, Serialize)]
pub struct RouteMetrics {
    /// `*` or the service name.
    pub route: String,
    /// Balancer: per service and instance.
    pub services: Vec<ServiceMetrics>,
    /// Breakers, by key.
    pub breakers: Vec<BreakerMetrics>,
    /// Retries.
    pub retry: RetryMetrics,
}

/// One service as the balancer sees it.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceMetrics {
    /// The service.
    pub service: String,
    /// Whether the balancer uses every instance because too few are
    /// available (panic mode).
    pub panic: bool,
    /// Its instances.
    pub instances: Vec<InstanceMetrics>,
}

/// One instance: connection counts, response times, distribution.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceMetrics {
    /// The endpoint's id (the `endpoint` label of every Prometheus family
    /// that names one).
    pub endpoint: String,
    /// `ip:port`.
    pub address: String,
    /// Requests sent to it.
    pub requests: u64,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Its latency estimate, in milliseconds.
    pub latency_ms: Option<f64>,
    /// Its share of the service's requests, from 0 to 1 (the Prometheus
    /// `mesh_instance_share_ratio`).
    pub share: f64,
    /// Whether it may receive requests now.
    pub available: bool,
}

/// One breaker: state, error rate, rejections.
#[derive(Clone, Debug, Serialize)]
pub struct BreakerMetrics {
    /// What it guards (`users`, `users/127.0.0.1:8081`...).
    pub key: String,
    /// `closed`, `open`, `half-open`...
    pub state: String,
    /// Failed calls in the window, in percent.
    pub failure_rate: Option<f64>,
    /// Slow calls in the window, in percent.
    pub slow_call_rate: Option<f64>,
    /// Calls in the window.
    pub buffered_calls: u32,
    /// Calls refused while open.
    pub rejected_total: u64,
    /// State transitions since the breaker was made.
    pub transitions_total: u64,
    /// Transitions into `open` or `forced-open` since the breaker was
    /// made: for a per-endpoint breaker, its endpoint's ejections.
    pub opened_total: u64,
}

/// Retries: attempts, success rates, total delays.
#[derive(Clone, Debug, Serialize)]
pub struct RetryMetrics {
    /// Requests received.
    pub requests: u64,
    /// Attempts sent (requests plus retries).
    pub attempts: u64,
    /// Retries made.
    pub retries: u64,
    /// Requests that succeeded after a retry.
    pub successes_after_retry: u64,
    /// Requests that failed after their last retry.
    pub exhausted: u64,
    /// Retries refused by the budget.
    pub budget_exhausted: u64,
    /// Hedged copies sent beyond each call's first.
    pub hedges: u64,
    /// Calls answered by a hedged copy rather than their first.
    pub hedges_won: u64,
    /// Time spent waiting between attempts, in milliseconds.
    pub total_delay_ms: f64,
}

/// One health check: results, failure rate, timing.
#[derive(Clone, Debug, Serialize)]
pub struct HealthMetrics {
    /// The check.
    pub name: String,
    /// `pending`, `passing` or `failing`.
    pub status: mesh_health::CheckStatus,
    /// Runs.
    pub runs: u64,
    /// Failed runs.
    pub failures: u64,
    /// The last run's duration, in milliseconds.
    pub last_duration_ms: Option<f64>,
}

/// Handshakes and certificate expiry.
#[derive(Clone, Debug, Serialize)]
pub struct TlsMetrics {
    /// Completed handshakes.
    pub handshakes: u64,
    /// Failed handshakes by reason.
    pub failures: Vec<(String, u64)>,
    /// Rotations to new material.
    pub rotations: u64,
    /// When the certificate expires (Unix seconds).
    pub certificate_not_after_unix: i64,
}

/// A snapshot of every counter `client`'s layers keep.
pub(crate) fn collect(client: &MeshClient) -> MeshMetrics {
    let routes = client
        .routes()
        .into_iter()
        .map(|(route, r)| RouteMetrics {
            route,
            services: balancer(&r.balance),
            breakers: breakers(&r.breaker),
            retry: retry(&r.retry),
        })
        .collect();
    MeshMetrics {
        service: client.service_name().to_string(),
        in_flight: client.in_flight(),
        routes,
        health: client.health().map(health).unwrap_or_default(),
        tls: client.tls().map(tls),
    }
}

/// The balancer's view: per service and instance.
pub(crate) fn balancer(balance: &BalanceLayer) -> Vec<ServiceMetrics> {
    let instance = |i: mesh_balance::InstanceMetrics| InstanceMetrics {
        endpoint: i.endpoint.to_string(),
        address: i.address.to_string(),
        requests: i.requests,
        in_flight: i.in_flight,
        latency_ms: i.latency.map(|d| d.as_secs_f64() * 1e3),
        share: i.share,
        available: i.available,
    };
    balance
        .metrics()
        .into_iter()
        .map(|s| ServiceMetrics {
            service: s.service.to_string(),
            panic: s.panic,
            instances: s.instances.into_iter().map(instance).collect(),
        })
        .collect()
}

/// Every breaker of a route, by key.
pub(crate) fn breakers(breaker: &BreakerLayer) -> Vec<BreakerMetrics> {
    breaker
        .metrics()
        .into_iter()
        .map(|(key, m)| BreakerMetrics {
            key: breaker_key(key),
            state: m.state.to_string(),
            failure_rate: m.failure_rate,
            slow_call_rate: m.slow_call_rate,
            buffered_calls: m.buffered_calls,
            rejected_total: m.rejected_total,
            transitions_total: m.transitions,
            opened_total: m.opened_total,
        })
        .collect()
}

/// A breaker's key as text: `service/endpoint` for a per-endpoint one.
pub(crate) fn breaker_key(key: BreakerKey) -> String {
    match key {
        BreakerKey::Endpoint(service, endpoint) => format!("{service}/{endpoint}"),
        BreakerKey::Service(service) => service.to_string(),
        BreakerKey::Authority(authority) => authority.to_string(),
        BreakerKey::Custom(key) => key.to_string(),
    }
}

/// A route's retry counters.
pub(crate) fn retry(retry: &RetryLayer) -> RetryMetrics {
    let s = retry.stats();
    RetryMetrics {
        requests: s.requests,
        attempts: s.attempts,
        retries: s.retries,
        successes_after_retry: s.successes_after_retry,
        exhausted: s.exhausted,
        budget_exhausted: s.budget_exhausted,
        hedges: s.hedges,
        hedges_won: s.hedges_won,
        total_delay_ms: s.total_delay.as_secs_f64() * 1e3,
    }
}

/// The local service's health checks.
pub(crate) fn health(health: &HealthCheckManager) -> Vec<HealthMetrics> {
    health
        .metrics()
        .into_iter()
        .map(|m| HealthMetrics {
            name: m.name,
            status: m.status,
            runs: m.runs,
            failures: m.failures,
            last_duration_ms: m.last_duration_ms,
        })
        .collect()
}

/// Mutual TLS: handshakes, failures by reason, rotations, expiry.
pub(crate) fn tls(credentials: &Credentials) -> TlsMetrics {
    let m = credentials.metrics().snapshot();
    TlsMetrics {
        handshakes: m.handshakes,
        failures: m
            .failures
            .into_iter()
            .map(|(l, n)| (l.to_owned(), n))
            .collect(),
        rotations: m.rotations,
        certificate_not_after_unix: m.certificate_not_after_unix,
    }
}
