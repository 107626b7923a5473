//! The routes from configuration: each service's stack of layers (retry,
//! discovery, split, balance, breaker, transport), its own when the
//! configuration overrides the service, else the shared default. The
//! breaker times each attempt (its call timeout is the per-attempt
//! timeout); retry holds the whole call to its deadline.

use std::collections::HashMap;
use std::sync::Arc;

use mesh_balance::BalanceLayer;
use mesh_breaker::BreakerLayer;
use mesh_core::{ConfigError, EventBus, ServiceName};
use mesh_discover::DiscoverLayer;
use mesh_retry::RetryLayer;
use tower::ServiceBuilder;

use crate::config::{MeshConfig, Protocol};
use crate::policies::MethodPolicies;
use crate::split::{SplitLayer, Splits};
use crate::transport::{Transport, Transports};

use super::lent_stacks::LentStacks;

/// One service's whole stack, outermost layer first.
pub(crate) type Stack = mesh_retry::Retry<
    mesh_discover::DiscoverService<
        crate::split::SplitService<mesh_balance::Balance<mesh_breaker::Breaker<Transport>>>,
    >,
>;

/// One service's layers: the stack and handles on its layers for metrics.
#[derive(Clone)]
pub(crate) struct Route {
    /// The stack, lent to calls (most calls clone nothing).
    pub(crate) lent: Arc<LentStacks<Stack>>,
    pub(crate) balance: BalanceLayer,
    pub(crate) breaker: BreakerLayer,
    pub(crate) retry: RetryLayer,
    /// Its per-method policies, if it has any.
    pub(crate) policies: Option<Arc<MethodPolicies>>,
}

/// Every route of a client, built once at start.
pub(crate) struct Routes {
    /// The layers of every service the configuration does not override.
    default: Route,
    /// The overridden services' own layers.
    overridden: HashMap<ServiceName, Route>,
}

/// What every route is built from, besides its service and transport.
pub(crate) struct RouteParts<'a> {
    /// The settings, per service.
    pub(crate) config: &'a MeshConfig,
    /// The discovery layer all routes share.
    pub(crate) discover: &'a DiscoverLayer,
    /// The canary splits all routes share.
    pub(crate) splits: &'a Arc<Splits>,
    /// Where the layers' events go.
    pub(crate) bus: &'a EventBus,
}

// === impl Routes ===

impl Routes {
    /// The default route, on the plain HTTP/1.1 transport (or mutual TLS
    /// when on), and one per service the configuration names, on the
    /// transport its protocol and `plaintext` pick.
    pub(crate) fn new(
        parts: &RouteParts<'_>,
        transports: &Transports,
    ) -> Result<Routes, ConfigError> {
        let default = parts.route("", transports.pick(false, false))?;
        let mut overridden = HashMap::new();
        for (service, o) in &parts.config.services {
            // Validation refuses a bad name; skipping keeps this total.
            let Ok(name) = ServiceName::new(service) else {
                continue;
            };
            let transport = transports.pick(o.protocol == Protocol::H2c, o.plaintext);
            overridden.insert(name, parts.route(service, transport)?);
        }
        Ok(Routes {
            default,
            overridden,
        })
    }

    /// The route for `service`: its own when the configuration overrides
    /// it, else the shared default one.
    pub(crate) fn get(&self, service: &ServiceName) -> &Route {
        if self.overridden.is_empty() {
            return &self.default;
        }
        self.overridden.get(service).unwrap_or(&self.default)
    }

    /// Every route by name (`*` for the default), for metrics.
    pub(crate) fn all(&self) -> Vec<(String, Route)> {
        let mut routes = vec![("*".to_owned(), self.default.clone())];
        routes.extend(
            self.overridden
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone())),
        );
        routes
    }
}

// === impl RouteParts ===

impl RouteParts<'_> {
    /// `service`'s layers (the defaults' for `""`) over `transport`.
    fn route(&self, service: &str, transport: &Transport) -> Result<Route, ConfigError> {
        let config = self.config;
        let bus = self.bus;
        let retry = RetryLayer::new(config.retry_for(service)?).events(bus.clone());
        // The default route (`""`) serves every service the file does not
        // name: each gets its own budget there, as a named one has in its
        // own route.
        let serves_many = service.is_empty();
        let retry = match serves_many {
            true => retry.budget_per_service(),
            false => retry,
        };
        let balance = BalanceLayer::from_config(config.balance_for(service)).events(bus.clone());
        let breaker = BreakerLayer::new(config.breaker_for(service)?).events(bus.clone());
        let stack = ServiceBuilder::new()
            .layer(retry.clone())
            .layer(self.discover.clone())
            .layer(SplitLayer(Arc::clone(self.splits)))
            .layer(balance.clone())
            .layer(breaker.clone())
            .service(transport.clone());
        Ok(Route {
            lent: Arc::new(LentStacks::new(&stack)),
            balance,
            breaker,
            retry,
            policies: config.method_policies_for(service)?.map(Arc::new),
        })
    }
}

/// The canary splits the configuration writes, in force from the first
/// call (and changeable later with `MeshClient::set_split`).
pub(crate) fn splits(config: &MeshConfig) -> Arc<Splits> {
    let splits = Arc::new(Splits::default());
    for (service, o) in &config.services {
        if let (Ok(name), false) = (ServiceName::new(service), o.split.is_empty()) {
            splits.set(name, o.split.clone());
        }
    }
    splits
}
