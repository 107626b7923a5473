//! What a [`MeshClient`] knows: its calls (totals by outcome and
//! latency histograms, per service and endpoint, which a
//! [`RequestMetricsLayer`](super::RequestMetricsLayer) counts alike for a
//! stack assembled by hand), calls in flight, the local service's health
//! checks and mutual TLS.

use crate::call_metrics::SeriesSnapshot;
use crate::metrics::{HealthMetrics, TlsMetrics};

use super::families::{labels, Families, Histogram, Histograms};

/// The client's families, before the layers'.
pub(super) fn record_calls(
    families: &mut Families,
    service: &str,
    in_flight: usize,
    calls: &[SeriesSnapshot],
) {
    let gauge = families.gauge(
        "mesh_client_in_flight",
        "Calls in flight through the client, response bodies included",
    );
    gauge
        .get_or_create(&labels(&[("service", service)]))
        .set(in_flight as f64);
    record_requests(families, calls);
}

/// `mesh_requests_total` and `mesh_request_duration_seconds` from
/// `calls`, a client's or a [`RequestMetricsLayer`]'s: one name, label set
/// and help for both.
///
/// [`RequestMetricsLayer`]: super::RequestMetricsLayer
pub(super) fn record_requests(families: &mut Families, calls: &[SeriesSnapshot]) {
    let requests = families.counter(
        "mesh_requests",
        "Calls through the client by service, endpoint and outcome: HTTP status \
         class, gRPC status code, or error kind when no response came back",
    );
    let mut histograms = Histograms::default();
    for call in calls {
        let endpoint = call.endpoint.to_string();
        let (service, endpoint) = (call.service.as_str(), endpoint.as_str());
        for (outcome, n) in &call.outcomes {
            let l = labels(&[
                ("service", service),
                ("endpoint", endpoint),
                ("status_class", outcome.status_class),
                ("grpc_code", outcome.grpc_code),
                ("error", outcome.error),
            ]);
            requests.get_or_create(&l).inc_by(*n);
        }
        histograms.0.push(Histogram {
            labels: labels(&[("service", service), ("endpoint", endpoint)]),
            sum: call.sum_seconds,
            count: call.count,
            buckets: call.buckets.clone(),
        });
    }
    families.histograms(
        "mesh_request_duration_seconds",
        "Call latency by service and endpoint, in seconds, retries included, \
         to the response's headers (to the end of its body for a gRPC call \
         whose status comes in trailers)",
        histograms,
    );
}

/// The local service's health checks, labelled by check.
pub(super) fn record_health(families: &mut Families, health: &[HealthMetrics]) {
    let runs = families.counter("mesh_health_check_runs", "Runs of a health check");
    let failures = families.counter(
        "mesh_health_check_failures",
        "Failed runs of a health check",
    );
    let passing = families.gauge(
        "mesh_health_check_passing",
        "Whether a health check passes (1) or not (0)",
    );
    let timing = families.gauge(
        "mesh_health_check_duration_seconds",
        "How long a check's last run took, in seconds",
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

/// Mutual TLS: handshakes, failures by reason, rotations, certificate
/// expiry.
pub(super) fn record_tls(families: &mut Families, tls: &TlsMetrics) {
    let handshakes = families.counter("mesh_tls_handshakes", "Completed TLS handshakes");
    handshakes.get_or_create(&Vec::new()).inc_by(tls.handshakes);
    let refused = families.counter(
        "mesh_tls_handshake_failures",
        "Failed TLS handshakes by reason",
    );
    for (reason, n) in &tls.failures {
        refused
            .get_or_create(&labels(&[("reason", reason)]))
            .inc_by(*n);
    }
    let rotations = families.counter("mesh_tls_rotations", "Rotations to new TLS material");
    rotations.get_or_create(&Vec::new()).inc_by(tls.rotations);
    let expiry = families.gauge(
        "mesh_tls_certificate_expiry_timestamp_seconds",
        "When the certificate in use expires, in seconds since the Unix epoch",
    );
    expiry
        .get_or_create(&Vec::new())
        .set(tls.certificate_not_after_unix as f64);
}
