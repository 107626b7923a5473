//! Prometheus metrics: one exporter, over a [`MeshClient`] or over layers
//! assembled by hand, into your own `prometheus-client` registry or as
//! text for a `/metrics` endpoint.
//!
//! The layers keep lock-free counters of their own and know nothing of
//! Prometheus (`BalanceLayer::metrics`, `BreakerLayer::metrics`,
//! `RetryLayer::stats`); this module is a `prometheus-client`
//! [`Collector`] that reads them when a scrape asks, so a layer pays
//! nothing between scrapes, no layer crate depends on `prometheus-client`,
//! and every metric name is written in one place. The same collector
//! serves both doors:
//!
//! - [`MeshClient::register_prometheus`] (or [`MeshClient::prometheus`],
//!   the text of a fresh registry) exports a client: its calls, its
//!   routes' layers, its health checks and TLS.
//! - [`register_layers`] exports the layers of stacks you built yourself,
//!   each stack named by a `route` label ([`Layers`]), and their calls:
//!   a [`RequestMetricsLayer`] on top of a stack counts them as a client
//!   counts its own ([`Layers::requests`]).
//!
//! Register one or the other in a registry, not both: each writes every
//! family it exports once.
//!
//! # The metrics
//!
//! Counters end in `_total`; seconds and ratios (0 to 1) are base units.
//!
//! The last column says where a stack assembled by hand gets each family
//! from ([`Layers`]); a [`MeshClient`] exports them all.
//!
//! | Name | Type | Labels | By hand |
//! |---|---|---|---|
//! | `mesh_requests_total` | counter | `service`, `endpoint`, `status_class` (`1xx`..`5xx`, `error`), `grpc_code` (`OK`, `UNAVAILABLE`..., empty unless gRPC), `error` (`connect`, `timeout`, `reset`, `circuit_open`, `other`, empty unless `status_class="error"`) | [`RequestMetricsLayer`], [`Layers::requests`] |
//! | `mesh_request_duration_seconds` | histogram | `service`, `endpoint` | [`RequestMetricsLayer`], [`Layers::requests`] |
//! | `mesh_client_in_flight` | gauge | `service` (the local one) | client only |
//! | `mesh_instance_requests_total` | counter | `route`, `service`, `endpoint`, `address` | [`Layers::balance`] |
//! | `mesh_instance_in_flight` | gauge | `route`, `service`, `endpoint`, `address` | [`Layers::balance`] |
//! | `mesh_instance_latency_seconds` | gauge | `route`, `service`, `endpoint`, `address` | [`Layers::balance`] |
//! | `mesh_instance_share_ratio` | gauge | `route`, `service`, `endpoint`, `address` | [`Layers::balance`] |
//! | `mesh_instance_available` | gauge | `route`, `service`, `endpoint`, `address` | [`Layers::balance`] |
//! | `mesh_breaker_state` | gauge | `route`, `breaker`, `state` | [`Layers::breaker`] |
//! | `mesh_breaker_failure_rate_ratio` | gauge | `route`, `breaker` | [`Layers::breaker`] |
//! | `mesh_breaker_slow_call_rate_ratio` | gauge | `route`, `breaker` | [`Layers::breaker`] |
//! | `mesh_breaker_rejected_total` | counter | `route`, `breaker` | [`Layers::breaker`] |
//! | `mesh_breaker_transitions_total` | counter | `route`, `breaker` | [`Layers::breaker`] |
//! | `mesh_breaker_opened_total` | counter | `route`, `breaker` | [`Layers::breaker`] |
//! | `mesh_endpoint_ejections_total` | counter | `route`, `service`, `endpoint` | [`Layers::breaker`] |
//! | `mesh_retry_requests_total`, `mesh_retry_attempts_total`, `mesh_retry_retries_total`, `mesh_retry_successes_after_retry_total`, `mesh_retry_exhausted_total`, `mesh_retry_budget_exhausted_total`, `mesh_retry_hedges_total`, `mesh_retry_hedges_won_total` | counter | `route` | [`Layers::retry`] |
//! | `mesh_retry_delay_seconds_total` | counter | `route` | [`Layers::retry`] |
//! | `mesh_health_check_runs_total`, `mesh_health_check_failures_total` | counter | `check` | client only |
//! | `mesh_health_check_passing`, `mesh_health_check_duration_seconds` | gauge | `check` | client only |
//! | `mesh_tls_handshakes_total`, `mesh_tls_rotations_total` | counter | | client only |
//! | `mesh_tls_handshake_failures_total` | counter | `reason` | client only |
//! | `mesh_tls_certificate_expiry_timestamp_seconds` | gauge | | client only |
//!
//! # Stacks assembled by hand
//!
//! [`RequestMetricsLayer`] goes on top of the stack, outside the retry
//! layer, so that one call is one count: by its service (the request's
//! `TargetService`, else its URI's host), the endpoint that answered or
//! failed, and its outcome; a gRPC answer whose status comes in trailers
//! is counted when its body ends, `CANCELLED` when it is dropped first.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use mesh::prelude::*;
//! use mesh::prometheus::{register_layers, Layers, RequestMetricsLayer};
//! use prometheus_client::registry::Registry;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let discovery = StaticRegistry::builder().service("orders", ["10.0.0.1:80"]).build()?;
//! let (requests, retry) = (RequestMetricsLayer::new().catalog(discovery.catalog()), RetryLayer::default());
//! let stack = ServiceBuilder::new()
//!     .layer(requests.clone())
//!     .layer(retry.clone())
//!     .layer(DiscoverLayer::new(discovery.catalog()))
//!     .layer(BalanceLayer::round_robin())
//!     // Your transport: hyper-util's client, here an in-memory answer.
//!     .service(tower::service_fn(|_req: http::Request<Full<Bytes>>| async {
//!         Ok::<_, BoxError>(http::Response::new(Full::new(Bytes::from("[]"))))
//!     }));
//! let mut registry = Registry::default();
//! register_layers(&mut registry, [Layers::new("orders").requests(&requests).retry(&retry)]);
//!
//! let response = stack.oneshot(http::Request::get("http://orders/list").body(Full::default())?).await?;
//! response.into_body().collect().await?;
//!
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry)?;
//! assert!(text.contains(
//!     r#"mesh_requests_total{service="orders",endpoint="10.0.0.1:80",status_class="2xx",grpc_code="",error=""} 1"#
//! ));
//! assert!(text.contains(r#"mesh_request_duration_seconds_count{service="orders",endpoint="10.0.0.1:80"} 1"#));
//! # Ok(()) }
//! ```
//!
//! # Cardinality
//!
//! Request series are kept per (service, endpoint) pair, at most
//! 4096 of them; calls to endpoints beyond that are counted under
//! `endpoint="overflow"`, calls to services first seen beyond it under
//! `service="overflow"` (a hand-assembled stack names services by the
//! request's host, which callers choose), and calls that failed before an
//! endpoint was chosen under `endpoint="none"`. Count one registry's calls
//! with one `RequestMetricsLayer`, cloned into every stack that shares
//! it. A scrape removes the series of
//! endpoints discovery no longer lists, once a scrape has shown their
//! last count: a client's discovery, or the catalog given to
//! [`RequestMetricsLayer::catalog`] (without one, a hand-assembled
//! stack's series stay, within the bound). The layers' series are the
//! instances and breakers the layers hold now, which leave with their
//! endpoints.
//!
//! [`MeshClient`]: crate::MeshClient
//! [`MeshClient::register_prometheus`]: crate::MeshClient::register_prometheus
//! [`MeshClient::prometheus`]: crate::MeshClient::prometheus

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::client::WeakClient;
use families::Families;

mod client;
mod families;
mod layers;
mod requests;

pub use layers::Layers;
pub use requests::{RequestMetrics, RequestMetricsBody, RequestMetricsFuture, RequestMetricsLayer};

/// The `Content-Type` of [`MeshClient::prometheus`]'s text: Prometheus's
/// text format, version 0.0.4, which every scraper and `promtool check
/// metrics` read.
///
/// [`MeshClient::prometheus`]: crate::MeshClient::prometheus
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Exports the layers of `stacks` into `registry`: one collector that
/// reads the layers' counters at each scrape (and the calls their
/// [`RequestMetricsLayer`]s counted), with the names
/// [`MeshClient::prometheus`](crate::MeshClient::prometheus) uses.
///
/// ```
/// use mesh::prelude::*;
/// use mesh::prometheus::{register_layers, Layers};
/// use prometheus_client::registry::Registry;
///
/// let (balance, breaker, retry) = (BalanceLayer::default(), BreakerLayer::default(), RetryLayer::default());
/// // ... ServiceBuilder::new().layer(retry.clone()).layer(balance.clone())...
/// let mut registry = Registry::default();
/// register_layers(&mut registry, [
///     Layers::new("orders").balance(&balance).breaker(&breaker).retry(&retry),
/// ]);
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains("mesh_retry_requests_total{route=\"orders\"} 0"));
/// ```
pub fn register_layers(registry: &mut Registry, stacks: impl IntoIterator<Item = Layers>) {
    let stacks = stacks.into_iter().collect();
    registry.register_collector(Box::new(LayerCollector { stacks }));
}

/// The layers of hand-assembled stacks.
#[derive(Debug)]
struct LayerCollector {
    stacks: Vec<Layers>,
}

impl Collector for LayerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut families = Families::default();
        // The calls first, in the order a client writes them.
        requests::record(&mut families, &self.stacks);
        layers::record(&mut families, &self.stacks);
        families.encode(&mut encoder)
    }
}

/// A [`MeshClient`](crate::MeshClient) and everything it holds, read at
/// each scrape. It holds the client weakly: a registry that outlives the
/// client exports nothing of it rather than keep it alive.
#[derive(Debug)]
pub(crate) struct ClientCollector {
    pub(crate) client: WeakClient,
}

impl Collector for ClientCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(client) = self.client.upgrade() else {
            return Ok(());
        };
        let mut families = Families::default();
        let calls = client.scrape_calls();
        let service = client.service_name().to_string();
        client::record_calls(&mut families, &service, client.in_flight(), &calls);
        layers::record(&mut families, &client.route_layers());
        let health = client
            .health()
            .map(crate::metrics::health)
            .unwrap_or_default();
        client::record_health(&mut families, &health);
        if let Some(tls) = client.tls().map(crate::metrics::tls) {
            client::record_tls(&mut families, &tls);
        }
        families.encode(&mut encoder)
    }
}

/// `registry` in Prometheus's text format ([`CONTENT_TYPE`]).
pub(crate) fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, registry);
    text
}
