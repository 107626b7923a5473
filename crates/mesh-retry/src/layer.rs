use std::sync::{Arc, OnceLock};

use mesh_core::{EventBus, FailureClassifier, ServiceName};
use tower_layer::Layer;

use crate::config::RetryConfig;
use crate::policy::{PolicyState, RetryPolicy};
use crate::service::Retry;
use crate::service_budgets::ServiceBudgets;
use crate::stats::{Counters, RetryStats};
use crate::trace::{MethodPolicyNames, RouteNames};

/// Wraps a service in retries; see [`Retry`].
///
/// All services made by the layer share one set of counters
/// ([`RetryLayer::stats`]) and one retry budget, or one budget per service
/// ([`RetryLayer::budget_per_service`]). A request that carries its own
/// [`RetryBudget`](crate::RetryBudget) extension is counted, and its
/// retries paid, from that budget instead of the layer's (whether or not
/// the layer has one).
///
/// Configure the layer before making services: [`RetryLayer::events`]
/// returns a layer with fresh counters and a fresh budget (and the route's
/// name, if [`RetryLayer::name_route`] gave one).
#[derive(Clone, Debug)]
pub struct RetryLayer {
    shared: Arc<PolicyState>,
}

/// Whose retry budget a layer's calls draw from (a request's own
/// extension aside).
#[derive(Clone, Copy, Debug)]
enum Accounts {
    /// One budget for every call of the layer.
    Layer,
    /// One per service ([`RetryLayer::budget_per_service`]).
    PerService,
}

impl RetryLayer {
    /// Retries according to `config`, with the default failure
    /// classification and no event subscribers.
    pub fn new(config: RetryConfig) -> Self {
        RetryLayer {
            shared: Arc::new(Self::shared(
                config,
                EventBus::default(),
                OnceLock::new(),
                Accounts::Layer,
            )),
        }
    }

    fn shared(
        config: RetryConfig,
        events: EventBus,
        route: OnceLock<RouteNames>,
        accounts: Accounts,
    ) -> PolicyState {
        let budget = config.new_budget();
        let service_budgets = match (accounts, config.budget(), &budget) {
            (Accounts::PerService, Some(settings), Some(shared)) => {
                Some(ServiceBudgets::new(settings, shared.clone()))
            }
            _ => None,
        };
        PolicyState {
            config,
            classifier: FailureClassifier::default(),
            events,
            counters: Counters::default(),
            budget,
            service_budgets,
            route,
        }
    }

    /// This layer's configuration and route name, in a fresh layer.
    fn rebuilt(self, events: EventBus, accounts: Accounts) -> Self {
        let (config, route) = (self.shared.config.clone(), self.shared.route.clone());
        RetryLayer {
            shared: Arc::new(Self::shared(config, events, route, accounts)),
        }
    }

    /// Publishes retries, exhausted retries and spent budgets on `events`.
    pub fn events(self, events: EventBus) -> Self {
        let accounts = match self.shared.service_budgets {
            Some(_) => Accounts::PerService,
            None => Accounts::Layer,
        };
        self.rebuilt(events, accounts)
    }

    /// Keeps one retry budget per service instead of one for the layer,
    /// each with the configured budget's settings, made on the service's
    /// first call: a layer serving several services (the `mesh` facade's
    /// default route) lets a failing one spend only the retries its own
    /// traffic funded. A call's service is its
    /// [`TargetService`](mesh_core::ext::TargetService), else its URI's
    /// host. At most 1,024 services get their own; later ones, and
    /// requests that name none, share one more. Without a budget
    /// configured, there is none to keep. The crate's README shows one in
    /// use.
    pub fn budget_per_service(self) -> Self {
        let events = self.shared.events.clone();
        self.rebuilt(events, Accounts::PerService)
    }

    /// Drops `service`'s own budget, for a layer that keeps one per
    /// service: for a service found unknown, so that names taken from
    /// requests leave nothing behind. A later call makes a fresh one.
    pub fn forget_budget(&self, service: &ServiceName) {
        if let Some(budgets) = &self.shared.service_budgets {
            budgets.forget(service);
        }
    }

    /// Names the route this layer serves in the span of every call through
    /// it (`mesh.call`): `mesh.route` is `route`, and `mesh.method_policy`
    /// the name `method_policies` gives the call's method and path, if any
    /// (left empty when it gives none). The `mesh` facade names each of its
    /// routes as its Prometheus metrics label them; a stack assembled by
    /// hand may name its own (say as its `prometheus::Layers`).
    ///
    /// A route is named once, for the services the layer made already and
    /// those it makes next: later names are refused (`false`). Unlike the
    /// rest of the configuration, a name can be given after the stack is
    /// built, so whoever lists the routes can name them. The names are
    /// read only while a call's span is enabled: without a subscriber they
    /// cost a call nothing.
    ///
    /// ```
    /// use mesh_retry::RetryLayer;
    ///
    /// let retry = RetryLayer::default();
    /// assert!(retry.name_route("orders", None));
    /// assert!(!retry.name_route("users", None), "a route is named once");
    /// ```
    pub fn name_route(
        &self,
        route: &str,
        method_policies: Option<Arc<dyn MethodPolicyNames>>,
    ) -> bool {
        self.shared
            .route
            .set(RouteNames::new(route, method_policies))
            .is_ok()
    }

    /// The counters so far.
    pub fn stats(&self) -> RetryStats {
        self.shared.stats()
    }

    /// The policy this layer's services use, for driving tower's own
    /// [`tower::retry::Retry`] directly. It shares this layer's counters
    /// and budget (for a layer that keeps one per service, the one its
    /// calls share when they name no service: tower's `Retry` does not
    /// look requests up).
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy::new(Arc::clone(&self.shared))
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new(RetryConfig::default())
    }
}

impl<S: Clone> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, Arc::clone(&self.shared))
    }
}
