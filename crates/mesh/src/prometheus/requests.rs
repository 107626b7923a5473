//! Request totals and latency histograms for stacks assembled by hand:
//! [`RequestMetricsLayer`] counts each call as a
//! [`MeshClient`](crate::MeshClient) counts its own, into the same
//! `CallMetrics` (one series of atomics per service and endpoint, bounded,
//! no allocation per call), and [`record`] writes them at a scrape with
//! the facade's names, labels and help.
//!
//! Tower's shape, one room each: the layer holds the counters and the
//! optional catalog, the service names each call's service and starts its
//! clock, the future counts the answer, and the body settles a gRPC call
//! whose status comes in trailers (sharing `CountAtEnd` with the facade's
//! own body, so both count a call's end alike).

mod body;
mod future;
mod layer;
mod service;

pub use body::RequestMetricsBody;
pub use future::RequestMetricsFuture;
pub use layer::RequestMetricsLayer;
pub use service::RequestMetrics;

use super::client::record_requests;
use super::families::Families;
use super::Layers;
use crate::call_metrics::SeriesSnapshot;

/// Fills `mesh_requests_total` and `mesh_request_duration_seconds` from
/// the request metrics layers of `stacks`: each layer once however many
/// stacks share it, and one series per (service, endpoint) pair however
/// many layers counted calls to it.
pub(super) fn record(families: &mut Families, stacks: &[Layers]) {
    let mut layers: Vec<&RequestMetricsLayer> = Vec::new();
    for layer in stacks.iter().filter_map(Layers::request_metrics) {
        if !layers.iter().any(|seen| seen.same_counters(layer)) {
            layers.push(layer);
        }
    }
    if layers.is_empty() {
        return;
    }
    let calls = merge(layers.iter().flat_map(|layer| layer.scrape()).collect());
    record_requests(families, &calls);
}

/// `calls` with the series of one (service, endpoint) pair added up, in
/// order: Prometheus refuses a series written twice.
fn merge(mut calls: Vec<SeriesSnapshot>) -> Vec<SeriesSnapshot> {
    calls.sort_by(|a, b| (&a.service, &a.endpoint).cmp(&(&b.service, &b.endpoint)));
    let mut merged: Vec<SeriesSnapshot> = Vec::with_capacity(calls.len());
    for call in calls {
        match merged.last_mut() {
            Some(last) if (&last.service, &last.endpoint) == (&call.service, &call.endpoint) => {
                add(last, call)
            }
            _ => merged.push(call),
        }
    }
    merged
}

/// Adds `other`'s calls to `into`, a series of the same pair.
fn add(into: &mut SeriesSnapshot, other: SeriesSnapshot) {
    for (labels, n) in other.outcomes {
        match into.outcomes.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, total)) => *total += n,
            None => into.outcomes.push((labels, n)),
        }
    }
    // Every snapshot has the same bounds, in the same order.
    for (bucket, (_, n)) in into.buckets.iter_mut().zip(other.buckets) {
        bucket.1 += n;
    }
    into.count += other.count;
    into.sum_seconds += other.sum_seconds;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call_metrics::CellLabels;
    use mesh_core::{EndpointId, ServiceName};

    fn series(service: &str, endpoint: &str, class: &'static str, n: u64) -> SeriesSnapshot {
        SeriesSnapshot {
            service: ServiceName::new(service).expect("name"),
            endpoint: EndpointId::new(endpoint).expect("id"),
            outcomes: vec![(
                CellLabels {
                    status_class: class,
                    grpc_code: "",
                    error: "",
                },
                n,
            )],
            buckets: vec![(0.1, n), (f64::INFINITY, 0)],
            count: n,
            sum_seconds: 0.01 * n as f64,
        }
    }

    #[test]
    fn two_layers_counting_one_endpoint_export_one_series() {
        let merged = merge(vec![
            series("users", "10.0.0.1:80", "2xx", 3),
            series("orders", "10.0.0.1:80", "2xx", 1),
            series("users", "10.0.0.1:80", "5xx", 2),
            series("users", "10.0.0.1:80", "2xx", 4),
        ]);
        assert_eq!(merged.len(), 2, "{merged:?}");
        let users = &merged[1];
        assert_eq!(users.service.as_str(), "users");
        let classes: Vec<(&str, u64)> = users
            .outcomes
            .iter()
            .map(|(l, n)| (l.status_class, *n))
            .collect();
        assert_eq!(classes, [("2xx", 7), ("5xx", 2)]);
        assert_eq!(users.buckets, [(0.1, 9), (f64::INFINITY, 0)]);
        assert_eq!(users.count, 9);
        assert!((users.sum_seconds - 0.09).abs() < 1e-9);
    }
}
