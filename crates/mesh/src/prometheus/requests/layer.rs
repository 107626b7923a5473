//! [`RequestMetricsLayer`]: where a hand-assembled stack's request
//! counters live, and which endpoints are still listed.

use std::fmt;
use std::sync::Arc;

use mesh_discover::Catalog;
use tower::Layer;

use super::RequestMetrics;
use crate::call_metrics::{CallMetrics, SeriesSnapshot};

/// Counts every call through the stack below it into
/// `mesh_requests_total` and `mesh_request_duration_seconds`, as a
/// [`MeshClient`](crate::MeshClient) counts its own; export them with
/// [`Layers::requests`](super::super::Layers::requests).
///
/// Put it at the top of the stack, outside the retry layer, so that one
/// call is one count whatever its retries (and its latency theirs too).
/// Clones share their counters: one layer may serve several stacks.
///
/// ```
/// use mesh::prelude::*;
/// use mesh::prometheus::RequestMetricsLayer;
/// use tower::ServiceBuilder;
///
/// # fn main() -> Result<(), BoxError> {
/// let registry = StaticRegistry::builder().service("orders", ["127.0.0.1:8080"]).build()?;
/// let requests = RequestMetricsLayer::new().catalog(registry.catalog());
/// let stack = ServiceBuilder::new()
///     .layer(requests.clone())
///     .layer(RetryLayer::default())
///     .layer(DiscoverLayer::new(registry.catalog()))
///     .layer(BalanceLayer::round_robin())
///     .service(tower::service_fn(|_req: http::Request<String>| async {
///         Ok::<_, BoxError>(http::Response::new(String::new()))
///     }));
/// # let _ = stack; Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct RequestMetricsLayer {
    metrics: Arc<CallMetrics>,
    catalog: Option<Catalog>,
}

// === impl RequestMetricsLayer ===

impl RequestMetricsLayer {
    /// A layer with no call counted yet, keeping at most 4096 (service,
    /// endpoint) series; calls to endpoints beyond them are counted
    /// under `endpoint="overflow"`, and calls to services first seen
    /// beyond them under `service="overflow"` (services are named by the
    /// request's host, which callers may choose).
    ///
    /// Count one registry's calls with one layer (cloned into each stack
    /// that shares it): series of separate layers for the same (service,
    /// endpoint) are added up at a scrape, and one removing a series the
    /// other keeps would make the sum go down.
    pub fn new() -> RequestMetricsLayer {
        RequestMetricsLayer::default()
    }

    /// Removes the series of endpoints `catalog` (the one the stack's
    /// `DiscoverLayer` resolves against) no longer lists, once a scrape
    /// has shown their last count, as a [`MeshClient`](crate::MeshClient)
    /// does: without it, every endpoint ever called keeps its series,
    /// within the bound.
    pub fn catalog(mut self, catalog: Catalog) -> RequestMetricsLayer {
        self.catalog = Some(catalog);
        self
    }

    /// Whether `self` and `other` count into the same series (clones).
    pub(in crate::prometheus) fn same_counters(&self, other: &RequestMetricsLayer) -> bool {
        Arc::ptr_eq(&self.metrics, &other.metrics)
    }

    /// Every series, for a scrape, then forgets those of endpoints the
    /// catalog no longer lists (and of services it no longer knows).
    pub(in crate::prometheus) fn scrape(&self) -> Vec<SeriesSnapshot> {
        let Some(catalog) = &self.catalog else {
            return self.metrics.scrape(|_, _| true);
        };
        self.metrics.scrape(|service, endpoint| {
            let set = catalog.get(service.as_str());
            match endpoint {
                Some(endpoint) => set.is_some_and(|set| set.get(endpoint).is_some()),
                None => set.is_some(),
            }
        })
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> RequestMetrics<S> {
        RequestMetrics::new(inner, Arc::clone(&self.metrics))
    }
}

impl fmt::Debug for RequestMetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestMetricsLayer")
            .field("catalog", &self.catalog.is_some())
            .finish_non_exhaustive()
    }
}
