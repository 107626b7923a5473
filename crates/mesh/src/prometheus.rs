//! The metrics snapshot in Prometheus text format (prometheus-client).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::metrics::MeshMetrics;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Renders `metrics` in the Prometheus text exposition format: a fresh
/// registry filled from the snapshot at each scrape, so the layers keep
/// their lock-free counters and pay nothing between scrapes.
pub fn render(metrics: &MeshMetrics) -> String {
    let mut registry = Registry::with_prefix("mesh");
    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Counter>::default();
        registry.register(name, help, family.clone());
        family
    };
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, FloatGauge>::default();
        registry.register(name, help, family.clone());
        family
    };

    let in_flight = gauge(
        &mut registry,
        "client_in_flight",
        "Calls in flight through the client",
    );
    in_flight
        .get_or_create(&labels(&[("service", &metrics.service)]))
        .set(metrics.in_flight as f64);

    let requests = counter(
        &mut registry,
        "instance_requests",
        "Requests sent to an instance",
    );
    let instance_in_flight = gauge(
        &mut registry,
        "instance_in_flight",
        "Requests in flight on an instance (connection count)",
    );
    let latency = gauge(
        &mut registry,
        "instance_latency_seconds",
        "An instance's latency estimate (peak EWMA)",
    );
    let share = gauge(
        &mut registry,
        "instance_share_ratio",
        "An instance's share of its service's requests",
    );
    let available = gauge(
        &mut registry,
        "instance_available",
        "Whether an instance may receive requests (1) or not (0)",
    );
    let breaker_state = gauge(
        &mut registry,
        "breaker_state",
        "1 for a breaker's current state",
    );
    let failure_rate = gauge(
        &mut registry,
        "breaker_failure_rate_percent",
        "Failed calls in a breaker's window",
    );
    let slow_rate = gauge(
        &mut registry,
        "breaker_slow_call_rate_percent",
        "Slow calls in a breaker's window",
    );
    let rejected = counter(&mut registry, "breaker_rejected", "Calls a breaker refused");
    let retry_requests = counter(
        &mut registry,
        "retry_requests",
        "Requests seen by the retry layer",
    );
    let attempts = counter(
        &mut registry,
        "retry_attempts",
        "Attempts sent, first ones included",
    );
    let retries = counter(&mut registry, "retry_retries", "Attempts beyond the first");
    let recovered = counter(
        &mut registry,
        "retry_successes_after_retry",
        "Requests that succeeded after a retry",
    );
    let exhausted = counter(
        &mut registry,
        "retry_exhausted",
        "Requests that failed after their last retry (max reached)",
    );
    let budget = counter(
        &mut registry,
        "retry_budget_exhausted",
        "Retries refused by the budget",
    );
    let delay = gauge(
        &mut registry,
        "retry_delay_seconds_total",
        "Time spent waiting between attempts",
    );

    for route in &metrics.routes {
        for service in &route.services {
            for i in &service.instances {
                let l = labels(&[
                    ("route", &route.route),
                    ("service", &service.service),
                    ("instance", &i.address),
                ]);
                requests.get_or_create(&l).inc_by(i.requests);
                instance_in_flight
                    .get_or_create(&l)
                    .set(f64::from(i.in_flight));
                if let Some(ms) = i.latency_ms {
                    latency.get_or_create(&l).set(ms / 1e3);
                }
                share.get_or_create(&l).set(i.share / 100.0);
                available
                    .get_or_create(&l)
                    .set(if i.available { 1.0 } else { 0.0 });
            }
        }
        for b in &route.breakers {
            let l = labels(&[("route", &route.route), ("breaker", &b.key)]);
            let mut with_state = l.clone();
            with_state.push(("state".to_owned(), b.state.clone()));
            breaker_state.get_or_create(&with_state).set(1.0);
            if let Some(rate) = b.failure_rate {
                failure_rate.get_or_create(&l).set(rate / 100.0);
            }
            if let Some(rate) = b.slow_call_rate {
                slow_rate.get_or_create(&l).set(rate / 100.0);
            }
            rejected.get_or_create(&l).inc_by(b.rejected_total);
        }
        let l = labels(&[("route", &route.route)]);
        let r = &route.retry;
        retry_requests.get_or_create(&l).inc_by(r.requests);
        attempts.get_or_create(&l).inc_by(r.attempts);
        retries.get_or_create(&l).inc_by(r.retries);
        recovered.get_or_create(&l).inc_by(r.successes_after_retry);
        exhausted.get_or_create(&l).inc_by(r.exhausted);
        budget.get_or_create(&l).inc_by(r.budget_exhausted);
        delay.get_or_create(&l).inc_by(r.total_delay_ms / 1e3);
    }

    let runs = counter(&mut registry, "health_check_runs", "Runs of a health check");
    let failures = counter(
        &mut registry,
        "health_check_failures",
        "Failed runs of a health check",
    );
    let passing = gauge(
        &mut registry,
        "health_check_passing",
        "Whether a health check passes (1) or not (0)",
    );
    let timing = gauge(
        &mut registry,
        "health_check_duration_seconds",
        "How long a check's last run took",
    );
    for h in &metrics.health {
        let l = labels(&[("check", &h.name)]);
        runs.get_or_create(&l).inc_by(h.runs);
        failures.get_or_create(&l).inc_by(h.failures);
        let ok = matches!(h.status, mesh_health::CheckStatus::Passing);
        passing.get_or_create(&l).set(if ok { 1.0 } else { 0.0 });
        if let Some(ms) = h.last_duration_ms {
            timing.get_or_create(&l).set(ms / 1e3);
        }
    }

    if let Some(tls) = &metrics.tls {
        let handshakes = counter(&mut registry, "tls_handshakes", "Completed TLS handshakes");
        handshakes.get_or_create(&Vec::new()).inc_by(tls.handshakes);
        let refused = counter(
            &mut registry,
            "tls_handshake_failures",
            "Failed TLS handshakes by reason",
        );
        for (reason, n) in &tls.failures {
            refused
                .get_or_create(&labels(&[("reason", reason)]))
                .inc_by(*n);
        }
        let expiry = gauge(
            &mut registry,
            "tls_certificate_expiry_timestamp_seconds",
            "When the certificate in use expires",
        );
        expiry
            .get_or_create(&Vec::new())
            .set(tls.certificate_not_after_unix as f64);
    }

    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}
