//! The metrics snapshot in Prometheus text format (prometheus-client).
//!
//! Families are registered in a fixed order (client, instances, breakers,
//! retries, health checks, TLS), so a scrape reads the same way each time.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::metrics::{HealthMetrics, MeshMetrics, RouteMetrics, TlsMetrics};

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
type Counters = Family<Labels, Counter>;
type Gauges = Family<Labels, FloatGauge>;

/// Renders `metrics` in the Prometheus text exposition format: a fresh
/// registry filled from the snapshot at each scrape, so the layers keep
/// their lock-free counters and pay nothing between scrapes.
pub fn render(metrics: &MeshMetrics) -> String {
    let mut registry = Registry::with_prefix("mesh");
    let in_flight = gauge(
        &mut registry,
        "client_in_flight",
        "Calls in flight through the client",
    );
    in_flight
        .get_or_create(&labels(&[("service", &metrics.service)]))
        .set(metrics.in_flight as f64);
    let instances = InstanceFamilies::register(&mut registry);
    let breakers = BreakerFamilies::register(&mut registry);
    let retries = RetryFamilies::register(&mut registry);
    for route in &metrics.routes {
        instances.record(route);
        breakers.record(route);
        retries.record(route);
    }
    record_health(&mut registry, &metrics.health);
    if let Some(tls) = &metrics.tls {
        record_tls(&mut registry, tls);
    }
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A counter family, registered as `mesh_<name>`.
fn counter(registry: &mut Registry, name: &str, help: &str) -> Counters {
    let family = Counters::default();
    registry.register(name, help, family.clone());
    family
}

/// A gauge family, registered as `mesh_<name>`.
fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauges {
    let family = Gauges::default();
    registry.register(name, help, family.clone());
    family
}

/// The per-instance families, labelled by route, service and instance.
struct InstanceFamilies {
    requests: Counters,
    in_flight: Gauges,
    latency: Gauges,
    share: Gauges,
    available: Gauges,
}

// === impl InstanceFamilies ===

impl InstanceFamilies {
    fn register(registry: &mut Registry) -> Self {
        InstanceFamilies {
            requests: counter(
                registry,
                "instance_requests",
                "Requests sent to an instance",
            ),
            in_flight: gauge(
                registry,
                "instance_in_flight",
                "Requests in flight on an instance (connection count)",
            ),
            latency: gauge(
                registry,
                "instance_latency_seconds",
                "An instance's latency estimate (peak EWMA)",
            ),
            share: gauge(
                registry,
                "instance_share_ratio",
                "An instance's share of its service's requests",
            ),
            available: gauge(
                registry,
                "instance_available",
                "Whether an instance may receive requests (1) or not (0)",
            ),
        }
    }

    fn record(&self, route: &RouteMetrics) {
        for service in &route.services {
            for i in &service.instances {
                let l = labels(&[
                    ("route", &route.route),
                    ("service", &service.service),
                    ("instance", &i.address),
                ]);
                self.requests.get_or_create(&l).inc_by(i.requests);
                self.in_flight.get_or_create(&l).set(f64::from(i.in_flight));
                if let Some(ms) = i.latency_ms {
                    self.latency.get_or_create(&l).set(ms / 1e3);
                }
                self.share.get_or_create(&l).set(i.share / 100.0);
                let available = if i.available { 1.0 } else { 0.0 };
                self.available.get_or_create(&l).set(available);
            }
        }
    }
}

/// The per-breaker families, labelled by route and breaker key.
struct BreakerFamilies {
    state: Gauges,
    failure_rate: Gauges,
    slow_rate: Gauges,
    rejected: Counters,
}

// === impl BreakerFamilies ===

impl BreakerFamilies {
    fn register(registry: &mut Registry) -> Self {
        BreakerFamilies {
            state: gauge(registry, "breaker_state", "1 for a breaker's current state"),
            failure_rate: gauge(
                registry,
                "breaker_failure_rate_percent",
                "Failed calls in a breaker's window",
            ),
            slow_rate: gauge(
                registry,
                "breaker_slow_call_rate_percent",
                "Slow calls in a breaker's window",
            ),
            rejected: counter(registry, "breaker_rejected", "Calls a breaker refused"),
        }
    }

    fn record(&self, route: &RouteMetrics) {
        for b in &route.breakers {
            let l = labels(&[("route", &route.route), ("breaker", &b.key)]);
            let mut with_state = l.clone();
            with_state.push(("state".to_owned(), b.state.clone()));
            self.state.get_or_create(&with_state).set(1.0);
            if let Some(rate) = b.failure_rate {
                self.failure_rate.get_or_create(&l).set(rate / 100.0);
            }
            if let Some(rate) = b.slow_call_rate {
                self.slow_rate.get_or_create(&l).set(rate / 100.0);
            }
            self.rejected.get_or_create(&l).inc_by(b.rejected_total);
        }
    }
}

/// The retry families, labelled by route.
struct RetryFamilies {
    requests: Counters,
    attempts: Counters,
    retries: Counters,
    recovered: Counters,
    exhausted: Counters,
    budget: Counters,
    hedges: Counters,
    hedges_won: Counters,
    delay: Gauges,
}

// === impl RetryFamilies ===

impl RetryFamilies {
    fn register(registry: &mut Registry) -> Self {
        RetryFamilies {
            requests: counter(
                registry,
                "retry_requests",
                "Requests seen by the retry layer",
            ),
            attempts: counter(
                registry,
                "retry_attempts",
                "Attempts sent, first ones included",
            ),
            retries: counter(registry, "retry_retries", "Attempts beyond the first"),
            recovered: counter(
                registry,
                "retry_successes_after_retry",
                "Requests that succeeded after a retry",
            ),
            exhausted: counter(
                registry,
                "retry_exhausted",
                "Requests that failed after their last retry (max reached)",
            ),
            budget: counter(
                registry,
                "retry_budget_exhausted",
                "Retries refused by the budget",
            ),
            hedges: counter(
                registry,
                "retry_hedges",
                "Hedged copies sent beyond each call's first",
            ),
            hedges_won: counter(
                registry,
                "retry_hedges_won",
                "Calls answered by a hedged copy rather than their first",
            ),
            delay: gauge(
                registry,
                "retry_delay_seconds_total",
                "Time spent waiting between attempts",
            ),
        }
    }

    fn record(&self, route: &RouteMetrics) {
        let l = labels(&[("route", &route.route)]);
        let r = &route.retry;
        self.requests.get_or_create(&l).inc_by(r.requests);
        self.attempts.get_or_create(&l).inc_by(r.attempts);
        self.retries.get_or_create(&l).inc_by(r.retries);
        self.recovered
            .get_or_create(&l)
            .inc_by(r.successes_after_retry);
        self.exhausted.get_or_create(&l).inc_by(r.exhausted);
        self.budget.get_or_create(&l).inc_by(r.budget_exhausted);
        self.hedges.get_or_create(&l).inc_by(r.hedges);
        self.hedges_won.get_or_create(&l).inc_by(r.hedges_won);
        self.delay.get_or_create(&l).inc_by(r.total_delay_ms / 1e3);
    }
}

/// The local service's health checks, labelled by check.
fn record_health(registry: &mut Registry, health: &[HealthMetrics]) {
    let runs = counter(registry, "health_check_runs", "Runs of a health check");
    let failures = counter(
        registry,
        "health_check_failures",
        "Failed runs of a health check",
    );
    let passing = gauge(
        registry,
        "health_check_passing",
        "Whether a health check passes (1) or not (0)",
    );
    let timing = gauge(
        registry,
        "health_check_duration_seconds",
        "How long a check's last run took",
    );
    for h in health {
        let l = labels(&[("check", &h.name)]);
        runs.get_or_create(&l).inc_by(h.runs);
        failures.get_or_create(&l).inc_by(h.failures);
        let ok = matches!(h.status, mesh_health::CheckStatus::Passing);
        passing.get_or_create(&l).set(if ok { 1.0 } else { 0.0 });
        if let Some(ms) = h.last_duration_ms {
            timing.get_or_create(&l).set(ms / 1e3);
        }
    }
}

/// Mutual TLS: handshakes, failures by reason, certificate expiry.
fn record_tls(registry: &mut Registry, tls: &TlsMetrics) {
    let handshakes = counter(registry, "tls_handshakes", "Completed TLS handshakes");
    handshakes.get_or_create(&Vec::new()).inc_by(tls.handshakes);
    let refused = counter(
        registry,
        "tls_handshake_failures",
        "Failed TLS handshakes by reason",
    );
    for (reason, n) in &tls.failures {
        refused
            .get_or_create(&labels(&[("reason", reason)]))
            .inc_by(*n);
    }
    let expiry = gauge(
        registry,
        "tls_certificate_expiry_timestamp_seconds",
        "When the certificate in use expires",
    );
    expiry
        .get_or_create(&Vec::new())
        .set(tls.certificate_not_after_unix as f64);
}
