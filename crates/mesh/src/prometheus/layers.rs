//! The layers' families (balancer, breakers, retries), labelled by route:
//! filled at each scrape from the handles every layer already keeps
//! (`BalanceLayer::metrics`, `BreakerLayer::metrics`,
//! `RetryLayer::stats`), for a [`MeshClient`](crate::MeshClient)'s routes
//! and for stacks assembled by hand alike; and [`Layers`], which also
//! carries a hand-assembled stack's [`RequestMetricsLayer`].

use mesh_balance::BalanceLayer;
use mesh_breaker::{BreakerKey, BreakerLayer};
use mesh_core::CircuitState;
use mesh_retry::RetryLayer;

use super::families::{labels, Counters, Families, FloatCounters, Gauges};
use super::RequestMetricsLayer;
use crate::metrics::{balancer, breaker_key, retry};

/// The layers of one stack, named by its `route` label, for
/// [`register_layers`](super::register_layers): any of a balancer, a
/// breaker and a retry layer, and the stack's request metrics (clones
/// share their counters with the stack's own).
///
/// ```
/// use mesh::prometheus::{Layers, RequestMetricsLayer};
/// use mesh::prelude::*;
///
/// let (balance, breaker, retry) = (BalanceLayer::default(), BreakerLayer::default(), RetryLayer::default());
/// let requests = RequestMetricsLayer::new();
/// let layers = Layers::new("orders")
///     .requests(&requests)
///     .balance(&balance)
///     .breaker(&breaker)
///     .retry(&retry);
/// # let _ = layers;
/// ```
#[derive(Clone, Debug)]
pub struct Layers {
    route: String,
    balance: Option<BalanceLayer>,
    breaker: Option<BreakerLayer>,
    retry: Option<RetryLayer>,
    requests: Option<RequestMetricsLayer>,
}

// === impl Layers ===

impl Layers {
    /// No layer yet, labelled `route="<route>"` (a [`MeshClient`]'s
    /// routes are `*` for its shared default layers and a service's name
    /// for a service with its own).
    ///
    /// [`MeshClient`]: crate::MeshClient
    pub fn new(route: impl Into<String>) -> Layers {
        Layers {
            route: route.into(),
            balance: None,
            breaker: None,
            retry: None,
            requests: None,
        }
    }

    /// Exports `balance`'s instances: `mesh_instance_*`.
    pub fn balance(mut self, balance: &BalanceLayer) -> Layers {
        self.balance = Some(balance.clone());
        self
    }

    /// Exports `breaker`'s breakers: `mesh_breaker_*` and
    /// `mesh_endpoint_ejections_total`.
    pub fn breaker(mut self, breaker: &BreakerLayer) -> Layers {
        self.breaker = Some(breaker.clone());
        self
    }

    /// Exports `retry`'s counters: `mesh_retry_*`.
    pub fn retry(mut self, retry: &RetryLayer) -> Layers {
        self.retry = Some(retry.clone());
        self
    }

    /// Exports the calls `requests` counted: `mesh_requests_total` and
    /// `mesh_request_duration_seconds`, with a [`MeshClient`]'s names and
    /// labels (`service` and `endpoint`, no `route`: several stacks
    /// sharing one layer, or counting calls to one endpoint, export one
    /// series for it).
    ///
    /// [`MeshClient`]: crate::MeshClient
    pub fn requests(mut self, requests: &RequestMetricsLayer) -> Layers {
        self.requests = Some(requests.clone());
        self
    }

    /// The stack's request metrics, if exported.
    pub(super) fn request_metrics(&self) -> Option<&RequestMetricsLayer> {
        self.requests.as_ref()
    }
}

/// Fills the layer families from `stacks`, each family once whatever the
/// number of stacks.
pub(super) fn record(families: &mut Families, stacks: &[Layers]) {
    let instances = InstanceFamilies::new(families);
    let breakers = BreakerFamilies::new(families);
    let retries = RetryFamilies::new(families);
    for stack in stacks {
        if let Some(balance) = &stack.balance {
            instances.record(&stack.route, balance);
        }
        if let Some(breaker) = &stack.breaker {
            breakers.record(&stack.route, breaker);
        }
        if let Some(retry) = &stack.retry {
            retries.record(&stack.route, retry);
        }
    }
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
    fn new(families: &mut Families) -> Self {
        InstanceFamilies {
            requests: families.counter(
                "mesh_instance_requests",
                "Requests the balancer sent to an instance",
            ),
            in_flight: families.gauge(
                "mesh_instance_in_flight",
                "Requests in flight on an instance",
            ),
            latency: families.gauge(
                "mesh_instance_latency_seconds",
                "An instance's latency estimate (peak EWMA), in seconds",
            ),
            share: families.gauge(
                "mesh_instance_share_ratio",
                "An instance's share of its service's requests, from 0 to 1",
            ),
            available: families.gauge(
                "mesh_instance_available",
                "Whether an instance may receive requests (1) or not (0)",
            ),
        }
    }

    fn record(&self, route: &str, balance: &BalanceLayer) {
        for service in balancer(balance) {
            for i in &service.instances {
                let l = labels(&[
                    ("route", route),
                    ("service", &service.service),
                    // Not `instance`: Prometheus gives every scraped
                    // series an `instance` label (the target) and would
                    // file this one as `exported_instance`.
                    ("endpoint", &i.endpoint),
                    ("address", &i.address),
                ]);
                self.requests.get_or_create(&l).inc_by(i.requests);
                self.in_flight.get_or_create(&l).set(f64::from(i.in_flight));
                if let Some(ms) = i.latency_ms {
                    self.latency.get_or_create(&l).set(ms / 1e3);
                }
                self.share.get_or_create(&l).set(i.share);
                let available = if i.available { 1.0 } else { 0.0 };
                self.available.get_or_create(&l).set(available);
            }
        }
    }
}

/// Every state a breaker can be in, for the `state` label.
const STATES: [CircuitState; 6] = [
    CircuitState::Closed,
    CircuitState::Open,
    CircuitState::HalfOpen,
    CircuitState::ForcedOpen,
    CircuitState::Disabled,
    CircuitState::MetricsOnly,
];

/// The per-breaker families, labelled by route and breaker key.
struct BreakerFamilies {
    state: Gauges,
    failure_rate: Gauges,
    slow_rate: Gauges,
    rejected: Counters,
    transitions: Counters,
    opened: Counters,
    ejections: Counters,
}

// === impl BreakerFamilies ===

impl BreakerFamilies {
    fn new(families: &mut Families) -> Self {
        BreakerFamilies {
            state: families.gauge(
                "mesh_breaker_state",
                "1 for the state a breaker is in, 0 for the others",
            ),
            failure_rate: families.gauge(
                "mesh_breaker_failure_rate_ratio",
                "Failed calls in a breaker's window, from 0 to 1",
            ),
            slow_rate: families.gauge(
                "mesh_breaker_slow_call_rate_ratio",
                "Slow calls in a breaker's window, from 0 to 1",
            ),
            rejected: families.counter("mesh_breaker_rejected", "Calls a breaker refused"),
            transitions: families
                .counter("mesh_breaker_transitions", "State transitions of a breaker"),
            opened: families.counter(
                "mesh_breaker_opened",
                "Transitions of a breaker into open or forced-open",
            ),
            ejections: families.counter(
                "mesh_endpoint_ejections",
                "Ejections of an endpoint by its own breaker opening",
            ),
        }
    }

    fn record(&self, route: &str, breaker: &BreakerLayer) {
        for (key, b) in breaker.metrics() {
            if let BreakerKey::Endpoint(service, endpoint) = &key {
                let l = labels(&[
                    ("route", route),
                    ("service", service.as_str()),
                    ("endpoint", &endpoint.to_string()),
                ]);
                self.ejections.get_or_create(&l).inc_by(b.opened_total);
            }
            let key = breaker_key(key);
            let l = labels(&[("route", route), ("breaker", &key)]);
            for state in STATES {
                let mut with_state = l.clone();
                with_state.push(("state", state.to_string()));
                let value = if state == b.state { 1.0 } else { 0.0 };
                self.state.get_or_create(&with_state).set(value);
            }
            if let Some(percent) = b.failure_rate {
                self.failure_rate.get_or_create(&l).set(percent / 100.0);
            }
            if let Some(percent) = b.slow_call_rate {
                self.slow_rate.get_or_create(&l).set(percent / 100.0);
            }
            self.rejected.get_or_create(&l).inc_by(b.rejected_total);
            self.transitions.get_or_create(&l).inc_by(b.transitions);
            self.opened.get_or_create(&l).inc_by(b.opened_total);
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
    delay: FloatCounters,
}

// === impl RetryFamilies ===

impl RetryFamilies {
    fn new(families: &mut Families) -> Self {
        RetryFamilies {
            requests: families.counter("mesh_retry_requests", "Requests seen by the retry layer"),
            attempts: families.counter(
                "mesh_retry_attempts",
                "Attempts sent, first ones and hedged copies included",
            ),
            retries: families.counter(
                "mesh_retry_retries",
                "Retries made (attempts after the first)",
            ),
            recovered: families.counter(
                "mesh_retry_successes_after_retry",
                "Requests that succeeded after a retry",
            ),
            exhausted: families.counter(
                "mesh_retry_exhausted",
                "Requests that still failed after their last retry",
            ),
            budget: families.counter(
                "mesh_retry_budget_exhausted",
                "Retries and hedged copies the retry budget refused",
            ),
            hedges: families.counter(
                "mesh_retry_hedges",
                "Hedged copies sent beyond each call's first",
            ),
            hedges_won: families.counter(
                "mesh_retry_hedges_won",
                "Calls answered by a hedged copy rather than their first",
            ),
            delay: families.seconds_counter(
                "mesh_retry_delay_seconds",
                "Time spent waiting between attempts, in seconds",
            ),
        }
    }

    fn record(&self, route: &str, layer: &RetryLayer) {
        let l = labels(&[("route", route)]);
        let r = retry(layer);
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
